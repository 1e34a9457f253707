"""A config's attention pattern and positional bias, turned into what every layer's self-attention shares: the mask
and bias, or an AttentionPattern for the memory-efficient implementations."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mulm_jax import platform
from mulm_jax.config import ModelConfig
from mulm_jax.nn import hooks
from mulm_jax.nn.efficient_attention import AttentionPattern, cudnn_unsupported
from mulm_jax.nn.positional import alibi_slope_values


def attention_pattern(
    cfg: ModelConfig,
    q_pos_BxT: jax.Array,
    k_pos_BxS: jax.Array,
    *,
    causal: bool,
    k_valid_BxS: Optional[jax.Array] = None,
    contiguous: bool = False,
) -> AttentionPattern:
    """The config's attention pattern (causal or not, sliding window, block-sparse, padding) and ALiBi slopes as a
    rule over these positions; contiguous: they are 0..T-1 in every row (see AttentionPattern)."""
    block_sparse = cfg.attention == "block_sparse"
    return AttentionPattern(
        q_pos_BxT,
        k_pos_BxS,
        k_valid_BxS,
        causal=causal,
        window=cfg.sliding_window if cfg.attention == "sliding_window" else None,
        block_size=cfg.block_size if block_sparse else None,
        num_global=cfg.num_global_tokens if block_sparse else 0,
        alibi_slopes=alibi_slope_values(cfg.num_heads) if cfg.positional == "alibi" else None,
        contiguous=contiguous,
    )


def whole_pass_implementation(cfg: ModelConfig, pattern: AttentionPattern, on: Optional[str] = None) -> str:
    """The self-attention implementation of a whole pass (no cache, no attention dropout) with this pattern:
    dense for block-sparse attention and while a hook point is active, else platform.attention_implementation's
    choice for cfg.attention_impl on `on` (default: this backend)."""
    if cfg.attention == "block_sparse" or hooks.any_active():
        return "dense"
    (B, T), S = pattern.q_pos_BxT.shape, pattern.k_pos_BxS.shape[1]
    return platform.attention_implementation(
        cfg.attention_impl, 4 * B * cfg.num_heads * T * S, cudnn_unsupported(pattern, cfg.dtype, cfg.head_dim), on
    )


def self_attention_inputs(
    cfg: ModelConfig,
    q_pos_BxT: jax.Array,
    k_pos_BxS: jax.Array,
    *,
    causal: bool,
    k_valid_BxS: Optional[jax.Array] = None,
    whole_pass: bool = False,
    contiguous: bool = False,
) -> tuple[Optional[jax.Array], Optional[jax.Array], Optional[AttentionPattern]]:
    """What every layer's self-attention takes for the config's attention pattern and positional bias: the bool
    mask [B, 1, T, S] and the ALiBi bias [B, H, T, S] or None, or instead an AttentionPattern (mask and bias None)
    where whole_pass_implementation picks a memory-efficient implementation for it.

    whole_pass: no cache, no attention dropout: the only passes the memory-efficient implementations run.
    contiguous: the positions are 0..T-1 in every row (see AttentionPattern)."""
    pattern = attention_pattern(
        cfg, q_pos_BxT, k_pos_BxS, causal=causal, k_valid_BxS=k_valid_BxS, contiguous=contiguous
    )
    if whole_pass and (implementation := whole_pass_implementation(cfg, pattern)) != "dense":
        return None, None, pattern.replace(implementation=implementation)
    mask, bias = pattern.mask_and_bias(q_pos_BxT, k_pos_BxS, k_valid_BxS)
    return mask, bias, None


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
