"""Positional encodings: sinusoidal, learned, rotary (RoPE with linear / NTK / YaRN / LongRoPE scaling) and ALiBi."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.config import RopeScaling


def sinusoidal_table(num_positions: int, d_model: int) -> jax.Array:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)); odd d drops the last cos."""
    if num_positions < 0 or d_model <= 0:
        raise ValueError(
            f"sinusoidal_table needs num_positions >= 0 and d_model > 0, got {num_positions} and {d_model}")
    pos_N = np.arange(num_positions, dtype=np.float64)
    dim_D = np.arange(d_model)
    angle_NxD = pos_N[:, None] / 10000.0 ** ((dim_D - dim_D % 2) / d_model)
    table_NxD = np.where(dim_D % 2 == 0, np.sin(angle_NxD), np.cos(angle_NxD))
    return jnp.asarray(table_NxD, dtype=jnp.float32)


class LearnedPositionalEmbedding(nn.Module):
    """One trained float32 vector per absolute position, looked up and cast to `dtype`."""

    max_len: int
    d_model: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pos_BxT: jax.Array) -> jax.Array:
        embedding_NxD = self.param("embedding", nn.initializers.normal(stddev=0.02),
                                   (self.max_len, self.d_model), jnp.float32)
        return jnp.take(embedding_NxD.astype(self.dtype), pos_BxT, axis=0)


def _factor_list(values: tuple[float, ...], name: str, half: int) -> np.ndarray:
    if len(values) != half:
        raise ValueError(
            f"rope_scaling.{name} has {len(values)} values; expected head_dim / 2 = {half} (one per rotary frequency)")
    return np.asarray(values, dtype=np.float64)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                     max_seq_len: int) -> tuple[jax.Array, float]:
    """(inv_freq_F, attention_factor) for RoPE, optionally scaled as in HF transformers' modeling_rope_utils."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs a positive even head_dim, got {head_dim}")
    half = head_dim // 2
    exponent_F = np.arange(half, dtype=np.float64) * 2 / head_dim
    inv_freq_F = 1.0 / theta ** exponent_F
    if scaling is None:
        return jnp.asarray(inv_freq_F, dtype=jnp.float32), 1.0

    factor = scaling.factor
    original = scaling.original_max_seq_len or max_seq_len
    attention_factor = 1.0
    if scaling.type == "linear":
        inv_freq_F = inv_freq_F / factor
    elif scaling.type == "ntk":
        if head_dim <= 2:
            raise ValueError(f"ntk RoPE scaling needs head_dim > 2, got {head_dim}")
        inv_freq_F = 1.0 / (theta * factor ** (head_dim / (head_dim - 2))) ** exponent_F
    elif scaling.type == "yarn":
        def correction_dim(rotations: float) -> float:  # the dim that turns `rotations` times over `original`
            return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
        high = min(math.ceil(correction_dim(scaling.beta_slow)), head_dim - 1)
        if low == high:
            high += 0.001
        ramp_F = np.clip((np.arange(half) - low) / (high - low), 0.0, 1.0)  # 0: extrapolate, 1: interpolate
        inv_freq_F = inv_freq_F / factor * ramp_F + inv_freq_F * (1.0 - ramp_F)
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0
    elif scaling.type == "longrope":
        # Phi-3 semantics: the stretch is max_seq_len / original_max_seq_len; `factor` is not used.
        long_F = _factor_list(scaling.long_factor, "long_factor", half)
        short_F = _factor_list(scaling.short_factor, "short_factor", half) if scaling.short_factor else np.ones(half)
        if max_seq_len > original:
            inv_freq_F = inv_freq_F / long_F
            attention_factor = math.sqrt(1.0 + math.log(max_seq_len / original) / math.log(original))
        else:
            inv_freq_F = inv_freq_F / short_F
    else:
        raise ValueError(
            f"unknown rope_scaling.type {scaling.type!r}; expected one of 'linear', 'ntk', 'yarn', 'longrope'")
    return jnp.asarray(inv_freq_F, dtype=jnp.float32), attention_factor


def apply_rope(x_BxTxHxDh: jax.Array, pos_BxT: jax.Array, inv_freq_F: jax.Array,
               attention_factor: float = 1.0) -> jax.Array:
    """Rotate-half RoPE (GPT-NeoX / Llama): x * cos + rotate_half(x) * sin, at per-sequence positions."""
    if x_BxTxHxDh.shape[-1] != 2 * inv_freq_F.shape[0]:
        raise ValueError(
            f"apply_rope: head width {x_BxTxHxDh.shape[-1]} does not match "
            f"2 * len(inv_freq) = {2 * inv_freq_F.shape[0]}")
    angle_BxTxF = pos_BxT.astype(jnp.float32)[..., None] * inv_freq_F.astype(jnp.float32)
    angle_BxTx1xDh = jnp.concatenate([angle_BxTxF, angle_BxTxF], axis=-1)[:, :, None, :]
    cos_BxTx1xDh = jnp.cos(angle_BxTx1xDh) * attention_factor
    sin_BxTx1xDh = jnp.sin(angle_BxTx1xDh) * attention_factor
    x_BxTxHxDh32 = x_BxTxHxDh.astype(jnp.float32)
    x1_BxTxHxF, x2_BxTxHxF = jnp.split(x_BxTxHxDh32, 2, axis=-1)
    rotated_BxTxHxDh = jnp.concatenate([-x2_BxTxHxF, x1_BxTxHxF], axis=-1)
    out_BxTxHxDh = x_BxTxHxDh32 * cos_BxTx1xDh + rotated_BxTxHxDh * sin_BxTx1xDh
    return out_BxTxHxDh.astype(x_BxTxHxDh.dtype)


def _pow2_slopes(n: int) -> list[float]:
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]


def alibi_slopes(num_heads: int) -> jax.Array:
    """ALiBi head slopes: 2^(-8/n), 2^(-16/n), ...; for non-powers of two, the official interleaved recipe."""
    if num_heads <= 0:
        raise ValueError(f"alibi_slopes needs num_heads > 0, got {num_heads}")
    pow2 = 2 ** math.floor(math.log2(num_heads))
    slopes_H = _pow2_slopes(pow2) + _pow2_slopes(2 * pow2)[0::2][: num_heads - pow2]
    return jnp.asarray(slopes_H, dtype=jnp.float32)


def alibi_bias(slopes_H: jax.Array, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, causal: bool) -> jax.Array:
    """[B, H, T, S] float32 bias -slope * distance; causal: distance to earlier keys (0 for masked later ones)."""
    dist_BxTxS = (q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]).astype(jnp.float32)
    dist_BxTxS = jnp.maximum(dist_BxTxS, 0.0) if causal else jnp.abs(dist_BxTxS)
    return -slopes_H.astype(jnp.float32)[None, :, None, None] * dist_BxTxS[:, None, :, :]
