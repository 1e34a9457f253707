"""Evaluation past the training context: sliding-window perplexity, loss by position, passkey retrieval,
associative recall."""

from mulm_jax.eval.passkey import answer_hits, passkey_accuracy, passkey_sequence
from mulm_jax.eval.perplexity import Window, sliding_perplexity, window_plan
from mulm_jax.eval.recall import recall_accuracy, recall_heatmap, recall_tables
from mulm_jax.eval.scoring import EvalError, WindowScorer, check_context, load_for_eval

__all__ = [
    "EvalError",
    "Window",
    "WindowScorer",
    "answer_hits",
    "check_context",
    "load_for_eval",
    "passkey_accuracy",
    "passkey_sequence",
    "recall_accuracy",
    "recall_heatmap",
    "recall_tables",
    "sliding_perplexity",
    "window_plan",
]
