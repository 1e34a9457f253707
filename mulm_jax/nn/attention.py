"""Attention: masks from positions, the scaled dot-product core, and multi-/grouped-/multi-query attention with a KV cache."""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mulm_jax.config import RopeScaling
from mulm_jax.nn.positional import apply_rope, rope_frequencies


@flax.struct.dataclass
class KVCache:
    """One layer's keys and values, static shape [B, S_max, K, Dh]; slot s holds the token at position s."""

    k_BxSxKxDh: jax.Array
    v_BxSxKxDh: jax.Array

    @classmethod
    def zeros(cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32) -> "KVCache":
        shape = (batch, max_len, num_kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def write(self, k_BxTxKxDh: jax.Array, v_BxTxKxDh: jax.Array, start_B: jax.Array) -> "KVCache":
        """Write T new keys/values per sequence at that sequence's own start position."""

        def put(buf_SxKxDh, new_TxKxDh, start):
            return lax.dynamic_update_slice(buf_SxKxDh, new_TxKxDh.astype(buf_SxKxDh.dtype), (start, 0, 0))

        return KVCache(jax.vmap(put)(self.k_BxSxKxDh, k_BxTxKxDh, start_B),
                       jax.vmap(put)(self.v_BxSxKxDh, v_BxTxKxDh, start_B))


def attention_mask(
    q_pos_BxT: jax.Array,
    k_pos_BxS: jax.Array,
    *,
    causal: bool,
    window: Optional[int] = None,
    block_size: Optional[int] = None,
    num_global: int = 0,
    k_valid_BxS: Optional[jax.Array] = None,
) -> jax.Array:
    """Which keys each query may see, as bool [B, 1, T, S], built from absolute positions.

    causal: keys at or before the query. window: keys fewer than `window` positions away.
    block_size: keys in the query's own block of `block_size` positions, plus the first `num_global`
    positions (which in turn see everything allowed). k_valid: False marks padding keys.
    """
    q_BxTx1 = q_pos_BxT[:, :, None]
    k_Bx1xS = k_pos_BxS[:, None, :]
    mask_BxTxS = jnp.ones(jnp.broadcast_shapes(q_BxTx1.shape, k_Bx1xS.shape), bool)
    if causal:
        mask_BxTxS &= k_Bx1xS <= q_BxTx1
    if window is not None:
        mask_BxTxS &= jnp.abs(q_BxTx1 - k_Bx1xS) < window
    if block_size is not None:
        local = (q_BxTx1 // block_size) == (k_Bx1xS // block_size)
        mask_BxTxS &= local | (k_Bx1xS < num_global) | (q_BxTx1 < num_global)
    if k_valid_BxS is not None:
        mask_BxTxS &= k_valid_BxS[:, None, :]
    return mask_BxTxS[:, None]


def dot_product_attention(
    q_BxTxHxDh: jax.Array,
    k_BxSxKxDh: jax.Array,
    v_BxSxKxDh: jax.Array,
    mask: Optional[jax.Array] = None,
    bias: Optional[jax.Array] = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """softmax(q k^T / sqrt(Dh) + bias, masked) v, with each of K kv heads shared by H / K query heads.

    mask: bool broadcastable to [B, H, T, S] (True = attend); bias: float broadcastable to the same.
    Returns the output [B, T, H, Dh] and the attention weights [B, H, T, S] (float32).
    """
    B, T, H, Dh = q_BxTxHxDh.shape
    S, K = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
    if H % K:
        raise ValueError(f"{H} query heads cannot be shared evenly among {K} kv heads")
    G = H // K
    q_BxTxHxDh = q_BxTxHxDh * jnp.asarray(Dh**-0.5, q_BxTxHxDh.dtype)
    if G == 1:  # multi-head: plain 4-D batched matmuls, no group axis for XLA to transpose around
        logits_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxDh, k_BxSxKxDh)
    else:
        logits_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxHxDh.reshape(B, T, K, G, Dh), k_BxSxKxDh)
        logits_BxHxTxS = logits_BxKxGxTxS.reshape(B, H, T, S)
    logits_BxHxTxS = logits_BxHxTxS.astype(jnp.float32)
    if bias is not None:
        logits_BxHxTxS = logits_BxHxTxS + bias
    if mask is not None:
        logits_BxHxTxS = jnp.where(mask, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
    probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1)
    used_BxHxTxS = probs_BxHxTxS
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, used_BxHxTxS.shape)
        used_BxHxTxS = jnp.where(keep, used_BxHxTxS / (1.0 - dropout_rate), 0.0)
    used_BxHxTxS = used_BxHxTxS.astype(v_BxSxKxDh.dtype)
    if G == 1:
        return jnp.einsum("bhts,bshd->bthd", used_BxHxTxS, v_BxSxKxDh), probs_BxHxTxS
    out_BxTxKxGxDh = jnp.einsum("bkgts,bskd->btkgd", used_BxHxTxS.reshape(B, K, G, T, S), v_BxSxKxDh)
    return out_BxTxKxGxDh.reshape(B, T, H, Dh), probs_BxHxTxS


class Attention(nn.Module):
    """Projections + core. num_kv_heads = num_heads: multi-head; 1: multi-query; in between: grouped-query.

    Self-attention when `kv_BxSxD` is None, cross-attention otherwise. With RoPE (`rope_theta` set),
    queries and keys are rotated by their absolute positions. With a `cache`, the new keys/values are
    written at `q_pos_BxT[:, 0]` onwards and the queries attend over the whole cache (slot s = position s),
    so the mask must be built for key positions 0..S_max-1. Returns (output [B, T, D], updated cache).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_bias: bool = True
    dropout: float = 0.0
    rope_theta: Optional[float] = None
    rope_scaling: Optional[RopeScaling] = None
    max_seq_len: int = 0
    out_init_std: float = 0.02  # GPT-2 scales residual-branch outputs down by sqrt(2 * layers)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        kv_BxSxD: Optional[jax.Array] = None,
        *,
        mask: Optional[jax.Array] = None,
        bias: Optional[jax.Array] = None,
        q_pos_BxT: Optional[jax.Array] = None,
        k_pos_BxS: Optional[jax.Array] = None,
        cache: Optional[KVCache] = None,
        deterministic: bool = True,
        return_weights: bool = False,
    ) -> tuple[jax.Array, Optional[KVCache]]:
        B, T, D = x_BxTxD.shape
        H, K, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        dense = lambda feats, name, axis=-1, std=0.02: nn.DenseGeneral(  # noqa: E731
            feats, axis=axis, use_bias=self.use_bias, dtype=self.dtype, name=name,
            kernel_init=nn.initializers.normal(std))
        source_BxSxD = x_BxTxD if kv_BxSxD is None else kv_BxSxD
        S = source_BxSxD.shape[1]
        # Projections over tokens flattened to one axis, as in FeedForward: XLA:CPU then takes the kernel
        # gradients without first copying the activations transposed.
        x_NxD = x_BxTxD.reshape(B * T, D)
        source_MxD = source_BxSxD.reshape(B * S, source_BxSxD.shape[-1])
        q_BxTxHxDh = dense((H, Dh), "query")(x_NxD).reshape(B, T, H, Dh)
        k_BxSxKxDh = dense((K, Dh), "key")(source_MxD).reshape(B, S, K, Dh)
        v_BxSxKxDh = dense((K, Dh), "value")(source_MxD).reshape(B, S, K, Dh)
        if self.rope_theta is not None:
            inv_freq_F, factor = rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling, self.max_seq_len)
            q_BxTxHxDh = apply_rope(q_BxTxHxDh, q_pos_BxT, inv_freq_F, factor)
            k_BxSxKxDh = apply_rope(k_BxSxKxDh, k_pos_BxS if cache is None else q_pos_BxT, inv_freq_F, factor)
        if cache is not None:
            cache = cache.write(k_BxSxKxDh, v_BxSxKxDh, q_pos_BxT[:, 0])
            k_BxSxKxDh = cache.k_BxSxKxDh.astype(self.dtype)
            v_BxSxKxDh = cache.v_BxSxKxDh.astype(self.dtype)
        use_dropout = self.dropout > 0.0 and not deterministic
        out_BxTxHxDh, probs_BxHxTxS = dot_product_attention(
            q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask, bias,
            dropout_rate=self.dropout if use_dropout else 0.0,
            dropout_rng=self.make_rng("dropout") if use_dropout else None)
        if return_weights:
            self.sow("intermediates", "attention_weights", probs_BxHxTxS)
        y_NxD = dense(D, "out", axis=(-2, -1), std=self.out_init_std)(out_BxTxHxDh.reshape(B * T, H, Dh))
        return y_NxD.reshape(B, T, D), cache
