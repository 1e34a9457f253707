"""Loss by position: the mean validation loss at each position of the context, over windows of the run's
validation split that each start fresh (how much each extra token of context helps)."""

from __future__ import annotations

import numpy as np

from mulm_jax.data.assemble import prepare_dataset
from mulm_jax.data.loader import load_tokens
from mulm_jax.eval.perplexity import sliding_perplexity
from mulm_jax.eval.scoring import EvalError, WindowScorer, check_context
from mulm_jax.infer.loading import LoadedModel


def loss_by_position(loaded: LoadedModel, tokens: np.ndarray, max_windows: int = 256) -> np.ndarray:
    """Mean loss [T] at positions 1..T (T: the model's context) over up to `max_windows` consecutive,
    non-overlapping windows of `tokens`: sliding-window evaluation with the stride equal to the context, one
    bucket per position."""
    T = loaded.config.model.max_seq_len
    check_context(loaded.config.model, T)
    windows = min(max_windows, (len(tokens) - 1) // T)
    if windows < 1:
        raise EvalError(
            f"the text has {len(tokens)} tokens: loss by position needs at least {T + 1} "
            f"(one window of the model's context and its next token)"
        )
    result = sliding_perplexity(WindowScorer(loaded), tokens[: windows * T + 1], T, stride=T, buckets=T)
    return np.asarray([bucket["loss"] for bucket in result["by_position"]], np.float32)


def validation_loss_by_position(loaded: LoadedModel, max_windows: int = 256) -> np.ndarray:
    """loss_by_position over the validation split of the data set the run was trained on."""
    return loss_by_position(loaded, np.asarray(load_tokens(prepare_dataset(loaded.config.data), "val")), max_windows)
