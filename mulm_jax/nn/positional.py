"""Positional encodings: sinusoidal, learned, rotary (RoPE, with six scalings: see RopeScaling) and ALiBi."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.config import RopeScaling

# Positional encodings looked up in a table of max_seq_len rows: no position can go past it. The others (rope,
# alibi, none) compute any position.
TABLES = ("sinusoidal", "learned")


def sinusoidal_table(num_positions: int, d_model: int) -> jax.Array:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)); odd d drops the last cos."""
    if num_positions < 0 or d_model <= 0:
        raise ValueError(
            f"sinusoidal_table needs num_positions >= 0 and d_model > 0, got {num_positions} and {d_model}"
        )
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
        embedding_NxD = self.param(
            "embedding", nn.initializers.normal(stddev=0.02), (self.max_len, self.d_model), jnp.float32
        )
        return jnp.take(embedding_NxD.astype(self.dtype), pos_BxT, axis=0)


def _factor_list(values: tuple[float, ...], name: str, half: int) -> np.ndarray:
    if len(values) != half:
        raise ValueError(
            f"rope_scaling.{name} has {len(values)} values; expected head_dim / 2 = {half} (one per rotary frequency)"
        )
    return np.asarray(values, dtype=np.float64)


def rope_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None, max_seq_len: int, seq_len_B: jax.Array | None = None
) -> tuple[jax.Array, float]:
    """(inv_freq, attention_factor) for RoPE, optionally scaled as in HF transformers' modeling_rope_utils.

    inv_freq is [F] (F = head_dim / 2), or [B, F] for the scalings that depend on each sequence's length
    (dynamic, longrope) when `seq_len_B` (the positions each sequence has reached, its largest + 1) is given;
    without it they take their unstretched frequencies (dynamic) or pick by max_seq_len (longrope).
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs a positive even head_dim, got {head_dim}")
    half = head_dim // 2
    exponent_F = np.arange(half, dtype=np.float64) * 2 / head_dim
    inv_freq_F = 1.0 / theta**exponent_F
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
    elif scaling.type == "dynamic":
        if head_dim <= 2:
            raise ValueError(f"dynamic RoPE scaling needs head_dim > 2, got {head_dim}")
        if seq_len_B is None:
            return jnp.asarray(inv_freq_F, dtype=jnp.float32), 1.0
        length_B = jnp.maximum(seq_len_B, original).astype(jnp.float32)
        base_B = theta * (factor * length_B / original - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / base_B[:, None] ** jnp.asarray(exponent_F, jnp.float32), 1.0
    elif scaling.type == "yarn":

        def correction_dim(rotations: float) -> float:  # the dim that turns `rotations` times over `original`
            return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
        if scaling.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp_F = np.clip((np.arange(half) - low) / (high - low), 0.0, 1.0)  # 0: extrapolate, 1: interpolate
        inv_freq_F = inv_freq_F / factor * ramp_F + inv_freq_F * (1.0 - ramp_F)
        attention_factor = scaling.attention_factor or (0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0)
    elif scaling.type == "llama3":
        wavelen_F = 2 * math.pi / inv_freq_F
        low_wavelen, high_wavelen = original / scaling.low_freq_factor, original / scaling.high_freq_factor
        smooth_F = (original / wavelen_F - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )  # 0: interpolate, 1: keep
        smoothed_F = (1 - smooth_F) * inv_freq_F / factor + smooth_F * inv_freq_F
        inv_freq_F = np.where(
            wavelen_F > low_wavelen, inv_freq_F / factor, np.where(wavelen_F < high_wavelen, inv_freq_F, smoothed_F)
        )
    elif scaling.type == "longrope":
        # Phi-3: the long factors for a sequence past original_max_seq_len, the short ones otherwise; cos and
        # sin scaled by sqrt(1 + log(stretch) / log(original)), the stretch being max_seq_len / original.
        long_F = inv_freq_F / _factor_list(scaling.long_factor, "long_factor", half)
        short_F = inv_freq_F / (
            _factor_list(scaling.short_factor, "short_factor", half) if scaling.short_factor else np.ones(half)
        )
        stretch = max_seq_len / original
        attention_factor = scaling.attention_factor or (
            math.sqrt(1.0 + math.log(stretch) / math.log(original)) if stretch > 1.0 else 1.0
        )
        if seq_len_B is not None:
            long_B = (seq_len_B > original)[:, None]
            return jnp.where(
                long_B, jnp.asarray(long_F, jnp.float32), jnp.asarray(short_F, jnp.float32)
            ), attention_factor
        inv_freq_F = long_F if max_seq_len > original else short_F
    else:
        raise ValueError(
            f"unknown rope_scaling.type {scaling.type!r}; expected one of 'linear', 'ntk', 'dynamic', "
            "'yarn', 'llama3', 'longrope'"
        )
    return jnp.asarray(inv_freq_F, dtype=jnp.float32), attention_factor


def apply_rope(
    x_BxTxHxDh: jax.Array, pos_BxT: jax.Array, inv_freq: jax.Array, attention_factor: float = 1.0
) -> jax.Array:
    """Rotate-half RoPE (GPT-NeoX / Llama): x * cos + rotate_half(x) * sin, at per-sequence positions.

    inv_freq: [F], or [B, F] with each sequence's own frequencies."""
    if x_BxTxHxDh.shape[-1] != 2 * inv_freq.shape[-1]:
        raise ValueError(
            f"apply_rope: head width {x_BxTxHxDh.shape[-1]} does not match 2 * len(inv_freq) = {2 * inv_freq.shape[-1]}"
        )
    angle_BxTxF = pos_BxT.astype(jnp.float32)[..., None] * inv_freq.astype(jnp.float32)[..., None, :]
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


def alibi_slope_values(num_heads: int) -> tuple[float, ...]:
    """ALiBi head slopes: 2^(-8/n), 2^(-16/n), ...; for non-powers of two, the official interleaved recipe."""
    if num_heads <= 0:
        raise ValueError(f"alibi_slopes needs num_heads > 0, got {num_heads}")
    pow2 = 2 ** math.floor(math.log2(num_heads))
    return tuple(_pow2_slopes(pow2) + _pow2_slopes(2 * pow2)[0::2][: num_heads - pow2])


def alibi_slopes(num_heads: int) -> jax.Array:
    """alibi_slope_values as a float32 array [H]."""
    return jnp.asarray(alibi_slope_values(num_heads), dtype=jnp.float32)


def alibi_bias(slopes_H: jax.Array, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, causal: bool) -> jax.Array:
    """[B, H, T, S] float32 bias -slope * distance; causal: distance to earlier keys (0 for masked later ones)."""
    dist_BxTxS = (q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]).astype(jnp.float32)
    dist_BxTxS = jnp.maximum(dist_BxTxS, 0.0) if causal else jnp.abs(dist_BxTxS)
    return -slopes_H.astype(jnp.float32)[None, :, None, None] * dist_BxTxS[:, None, :, :]
