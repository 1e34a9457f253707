"""Sliding-window perplexity (as the YaRN and LongRoPE papers measure it) and the loss by position in the window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mulm_jax.data.tokenizer import TokenLengths
from mulm_jax.eval.scoring import EvalError, batched

Scorer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (inputs, targets) -> (nll, greedy ids)


@dataclass(frozen=True)
class Window:
    start: int  # inputs tokens[start : start + T], targets tokens[start + 1 : start + T + 1]
    first: int  # the targets at offsets first .. T - 1 are scored; the earlier ones are only context


def window_plan(num_tokens: int, context: int, stride: int) -> tuple[list[Window], int]:
    """The windows that score each of the num_tokens - 1 targets exactly once, and their length T.

    Windows of T = context tokens (fewer only when the text is shorter) start every `stride` tokens; each scores
    the targets that earlier windows did not, so every target but the first window's has at least T - stride
    tokens of left context. The last window is moved back to end at the text's end, keeping its length.
    """
    targets = num_tokens - 1
    if targets < 1:
        raise EvalError(f"the text has {num_tokens} tokens: at least 2 are needed to score one")
    if not 1 <= stride <= context:
        raise EvalError(f"stride={stride} must be in [1, context={context}]: a longer stride would skip tokens")
    T = min(context, targets)
    plan, scored, start = [], 0, 0
    while scored < targets:
        start = min(start, targets - T)
        plan.append(Window(start, scored - start))
        scored = start + T
        start += stride
    return plan, T


def sliding_perplexity(
    score: Scorer,
    tokens: np.ndarray,
    context: int,
    stride: int | None = None,
    *,
    batch: int = 4,
    buckets: int = 8,
    lengths: TokenLengths | None = None,
) -> dict:
    """Mean next-token loss over `tokens` scored in sliding windows (stride default context / 2), its perplexity,
    the summed loss in bits per UTF-8 byte and per character of the scored tokens' text (every token but the
    first; None without `lengths`, or when a scored id has no length), and the mean loss of each of `buckets`
    equal spans of window positions: {"context", "stride", "tokens", "loss", "ppl", "bytes", "chars",
    "bits_per_byte", "bits_per_char", "by_position": [{"start", "end", "tokens", "loss"}, ...]}.
    """
    stride = stride or max(context // 2, 1)
    plan, T = window_plan(len(tokens), context, stride)
    offsets_T = np.arange(T)
    starts = np.asarray([w.start for w in plan])
    firsts = np.asarray([w.first for w in plan])
    sums_T, counts_T = np.zeros(T), np.zeros(T)
    for rows, real in batched(np.stack([starts, firsts], axis=1), batch):
        window_BxT1 = np.asarray(tokens[rows[:, :1] + np.arange(T + 1)], np.int32)
        nll_BxT, _ = score(window_BxT1[:, :-1], window_BxT1[:, 1:])
        scored_BxT = (offsets_T >= rows[:, 1:]) & (np.arange(len(rows)) < real)[:, None]
        sums_T += np.where(scored_BxT, nll_BxT, 0.0).sum(0)
        counts_T += scored_BxT.sum(0)
    loss_sum = float(sums_T.sum())
    loss = loss_sum / float(counts_T.sum())
    text = lengths.count(tokens[1:], tokens[:-1]) if lengths is not None else None
    nbytes, chars = text or (None, None)
    edges = np.linspace(0, T, min(buckets, T) + 1).round().astype(int)
    by_position = [
        {
            "start": int(a),
            "end": int(b),
            "tokens": int(counts_T[a:b].sum()),
            "loss": float(sums_T[a:b].sum() / counts_T[a:b].sum()) if counts_T[a:b].sum() else None,
        }
        for a, b in zip(edges[:-1], edges[1:])
    ]
    return {
        "context": T,
        "stride": stride,
        "tokens": int(counts_T.sum()),
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "bytes": nbytes,
        "chars": chars,
        "bits_per_byte": bits_per(loss_sum, nbytes),
        "bits_per_char": bits_per(loss_sum, chars),
        "by_position": by_position,
    }


def bits_per(loss_sum: float, units: int | None) -> float | None:
    """A summed loss in nats as bits per unit of text (byte or character); None when the count is unknown."""
    return loss_sum / units / math.log(2) if units else None
