"""A short greedy continuation for evaluation logs: the whole window re-run per token, one compiled shape."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def greedy_continuation(model: nn.Module, params: Any, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Greedy next tokens of a decoder model; the context is the last max_seq_len tokens."""
    T = model.cfg.max_seq_len

    @jax.jit
    def next_token(window_1xT, length):
        logits_1xTxV = model.apply({"params": params}, window_1xT)
        return jnp.argmax(logits_1xTxV[0, length - 1])

    ids = list(prompt_ids) or [0]
    for _ in range(num_tokens):
        context = ids[-T:]
        window = np.zeros((1, T), np.int32)
        window[0, :len(context)] = context
        ids.append(int(next_token(window, len(context))))
    return ids[len(prompt_ids):]
