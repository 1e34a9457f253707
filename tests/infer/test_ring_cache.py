"""A sliding-window model decodes with a ring cache of its window: greedy output equals re-running the model on
the last `window` tokens (one layer; more layers see further back, so they equal re-running the whole sequence),
past the context for RoPE and ALiBi; a learned table still stops at the context; `info` reports the window's cache."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from support import loaded
from mulm_jax.infer import Engine, InferenceError, LoadedModel, SamplingParams
from mulm_jax.models.info import describe, kv_cache_line


def greedy_rerun(lm: LoadedModel, prompt: list[int], n: int, last_window: bool) -> tuple[list[int], list[float]]:
    """Greedy tokens and log-probabilities from re-running the model without a cache at absolute positions, on
    the last `window` tokens, or on the whole sequence (padded to its final length: one compilation)."""
    W = lm.config.model.sliding_window
    apply = jax.jit(lambda ids, pos: lm.model.apply({"params": lm.params}, ids, pos_BxT=pos))
    seq, logprobs = list(prompt), []
    for _ in range(n):
        start = max(len(seq) - W, 0) if last_window else 0
        ids = np.zeros((1, len(prompt) + n - start if not last_window else len(seq) - start), np.int32)
        ids[0, : len(seq) - start] = seq[start:]
        logits = np.asarray(apply(ids, np.arange(start, start + ids.shape[1])[None]))[0, len(seq) - start - 1]
        logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        seq.append(int(np.argmax(logits)))
        logprobs.append(float(logp[seq[-1]]))
    return seq[len(prompt) :], logprobs


@pytest.mark.parametrize("positional, layers", [("rope", 1), ("alibi", 2)])
def test_greedy_decoding_past_the_context_equals_rerunning_the_model(positional, layers):
    lm = loaded(num_layers=layers, positional=positional, attention="sliding_window", sliding_window=4, max_seq_len=16)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 3]]
    with Engine(lm, slots=2) as engine:
        assert engine._state.caches[0].k_BxKxSxDh.shape == (2, 4, 4, 4)  # slots, kv heads, the window, head width
        results = [
            r.result(timeout=120)
            for r in [engine.submit(p, SamplingParams(max_tokens=40, temperature=0.0, logprobs=0)) for p in prompts]
        ]
    for prompt, result in zip(prompts, results):
        tokens, logprobs = greedy_rerun(lm, prompt, 40, last_window=layers == 1)
        assert len(prompt) + len(result.token_ids) > 2 * 16 and result.finish_reason == "length"
        assert list(result.token_ids) == tokens
        np.testing.assert_allclose([lp.logprob for lp in result.logprobs], logprobs, atol=1e-4)


def test_a_learned_table_with_a_sliding_window_keeps_a_ring_but_stops_at_the_context():
    lm = loaded(positional="learned", attention="sliding_window", sliding_window=4, max_seq_len=16)
    engine = Engine(lm, slots=1)
    assert engine._state.caches[0].k_BxKxSxDh.shape[2] == 4
    with pytest.raises(InferenceError, match="exceed the context of 16 tokens"):
        engine.submit([1, 2, 3], SamplingParams(max_tokens=14))
    engine.submit([1, 2, 3], SamplingParams(max_tokens=13))


def test_info_reports_the_cache_of_the_window():
    rope = loaded(positional="rope", attention="sliding_window", sliding_window=4, max_seq_len=16).config.model
    info = describe(rope)
    assert info["kv_cache_positions"] == 4
    assert info["kv_cache_bytes_per_sequence"] == 4 * info["kv_cache_bytes_per_token"]
    assert kv_cache_line(rope, info).endswith("per sequence: a ring of the sliding window's 4 positions, at any length")
    learned = loaded(positional="learned", attention="sliding_window", sliding_window=4).config.model
    assert kv_cache_line(learned, describe(learned)).endswith(
        "a ring of the sliding window's 4 positions, up to the context 16"
    )
    full = loaded(positional="rope").config.model
    assert describe(full)["kv_cache_positions"] == 16
    assert kv_cache_line(full, describe(full)).endswith("per sequence at full context 16")
