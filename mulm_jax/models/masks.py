"""A config's attention pattern and positional bias, turned into the mask and bias every layer shares."""

from __future__ import annotations

from typing import Optional

import jax

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
        q_pos_BxT, k_pos_BxS, causal=causal,
        window=cfg.sliding_window if cfg.attention == "sliding_window" else None,
        block_size=cfg.block_size if cfg.attention == "block_sparse" else None,
        num_global=cfg.num_global_tokens if cfg.attention == "block_sparse" else 0,
        k_valid_BxS=k_valid_BxS)
    bias = None
    if cfg.positional == "alibi":
        bias = alibi_bias(alibi_slopes(cfg.num_heads), q_pos_BxT, k_pos_BxS, causal=causal)
    return mask, bias
