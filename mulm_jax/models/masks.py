"""A config's attention pattern and positional bias, turned into the mask and bias every layer shares."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mulm_jax.config import ModelConfig
from mulm_jax.nn.attention import attention_mask
from mulm_jax.nn.positional import alibi_bias, alibi_slopes


def self_attention_mask_and_bias(
    cfg: ModelConfig,
    q_pos_BxT: jax.Array,
    k_pos_BxS: jax.Array,
    *,
    causal: bool,
    k_valid_BxS: Optional[jax.Array] = None,
) -> tuple[jax.Array, Optional[jax.Array]]:
    """Bool mask [B, 1, T, S] for the config's attention pattern, and the ALiBi bias [B, H, T, S] or None."""
    mask = attention_mask(
        q_pos_BxT,
        k_pos_BxS,
        causal=causal,
        window=cfg.sliding_window if cfg.attention == "sliding_window" else None,
        block_size=cfg.block_size if cfg.attention == "block_sparse" else None,
        num_global=cfg.num_global_tokens if cfg.attention == "block_sparse" else 0,
        k_valid_BxS=k_valid_BxS,
    )
    bias = None
    if cfg.positional == "alibi":
        bias = alibi_bias(alibi_slopes(cfg.num_heads), q_pos_BxT, k_pos_BxS, causal=causal)
    return mask, bias


def cached_key_positions(
    q_pos_BxT: jax.Array, max_len: int, valid_BxT: Optional[jax.Array] = None, ring: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Key positions and validity [B, S_max + T] for queries attending over a cache and then themselves.

    Cache slot s holds position s (of a `ring` cache: the newest position before the new tokens that is s modulo
    S_max); slots at or past each sequence's first new position are stale (the new keys are written there only
    after attention), and so are a ring's slots not yet written: both are marked invalid. `valid_BxT`: False
    marks padding among the new tokens.
    """
    B, T = q_pos_BxT.shape
    first_Bx1 = q_pos_BxT[:, :1]
    pos_BxS = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (B, max_len))
    if ring:
        pos_BxS = pos_BxS + max_len * jnp.floor_divide(first_Bx1 - 1 - pos_BxS, max_len)
    new_valid_BxT = jnp.ones((B, T), bool) if valid_BxT is None else valid_BxT
    return (
        jnp.concatenate([pos_BxS, q_pos_BxT], axis=1),
        jnp.concatenate([(pos_BxS >= 0) & (pos_BxS < first_Bx1), new_valid_BxT], axis=1),
    )
