"""A short greedy continuation for evaluation logs: compiled once per model, the parameters passed in each call."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def greedy_sampler(
    model: nn.Module, num_tokens: int, vocab_size: int, params_like: Any, window: Optional[int] = None
) -> Callable[[Any, list[int]], list[int]]:
    """(params, prompt ids) -> the next `num_tokens` greedy ids of a decoder model, all below `vocab_size`.

    `vocab_size` is the tokenizer's: a model's vocabulary may be padded past it, and an id beyond it cannot be
    decoded. The context is the last `window` ids (default and at most max_seq_len), the whole window re-run per
    token: a prompt that leaves room in it for the `num_tokens` is continued as by the whole context, at the
    cost of `window` positions per token. All tokens come from one call of one program, compiled here for
    parameters shaped like `params_like` (arrays or ShapeDtypeStructs).
    """
    T = min(window or model.cfg.max_seq_len, model.cfg.max_seq_len)

    def continuation(params, window_1xT, length):
        def next_id(carry, _):
            window_1xT, length = carry
            logits_1xTxV = model.apply({"params": params}, window_1xT)
            token = jnp.argmax(logits_1xTxV[0, length - 1, :vocab_size]).astype(jnp.int32)
            window_1xT = jnp.where(length == T, jnp.roll(window_1xT, -1, axis=1), window_1xT)  # full: slide by one
            window_1xT = window_1xT.at[0, jnp.minimum(length, T - 1)].set(token)
            return (window_1xT, jnp.minimum(length + 1, T)), token

        _, ids = jax.lax.scan(next_id, (window_1xT, length), None, length=num_tokens)
        return ids

    compiled = (
        jax.jit(continuation)
        .lower(params_like, jax.ShapeDtypeStruct((1, T), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
        .compile()
    )

    def sample(params: Any, prompt_ids: list[int]) -> list[int]:
        context = (list(prompt_ids) or [0])[-T:]
        window_1xT = np.zeros((1, T), np.int32)
        window_1xT[0, : len(context)] = context
        return [int(i) for i in jax.device_get(compiled(params, window_1xT, np.int32(len(context))))]

    return sample
