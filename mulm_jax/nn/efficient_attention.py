"""Self-attention that never holds every head's full [T, S] score matrix: for training long contexts (mulm_1gb at
8 x 2048 would otherwise keep about 2 GB of scores and 2 GB of probabilities per layer).

An AttentionPattern describes the mask and positional bias by their rule (the positions, causal or not, a sliding
window, padding, ALiBi slopes) instead of as [B, H, T, S] arrays, and attends with one of two implementations:

- "blockwise": the queries in blocks of QUERY_BLOCK, one block after another (lax.map), each block's scores,
  softmax and output computed by the same dot_product_attention as the dense path and recomputed in the backward
  pass (jax.checkpoint), so one block's scores live at a time. With contiguous positions (0..T-1, every training
  window), a sliding window's block reads only the keys inside its window. Any mask the rule gives (causal,
  sliding window, padding, bidirectional) and ALiBi. (Blocks unrolled in Python could skip a causal block's later
  keys, but XLA then runs the independent blocks side by side, and their scores together take as much memory as
  the dense path's.)
- "cudnn": jax.nn.dot_product_attention's cuDNN flash attention (a GPU, bfloat16 or float16, no ALiBi, no
  padding), which keeps one log-sum-exp per query instead of the scores.

Which one a model uses is chosen in platform.attention_implementation, from model.attention_impl.
"""

from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp

from mulm_jax.nn.attention import attention_mask, dot_product_attention
from mulm_jax.nn.positional import alibi_bias

QUERY_BLOCK = 128  # queries per block of the blockwise implementation


@flax.struct.dataclass
class AttentionPattern:
    """Which keys each query sees, and the positional bias, as a rule over positions (see attention_mask).

    contiguous: the positions are 0..T-1 in every row, queries and keys alike (no cache), so a block of queries
    knows statically which keys it can see. implementation: "blockwise" or "cudnn" (see the module)."""

    q_pos_BxT: jax.Array
    k_pos_BxS: jax.Array
    k_valid_BxS: Optional[jax.Array] = None
    causal: bool = flax.struct.field(pytree_node=False, default=True)
    window: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    block_size: Optional[int] = flax.struct.field(pytree_node=False, default=None)  # block-sparse: dense path only
    num_global: int = flax.struct.field(pytree_node=False, default=0)
    alibi_slopes: Optional[tuple[float, ...]] = flax.struct.field(pytree_node=False, default=None)
    contiguous: bool = flax.struct.field(pytree_node=False, default=False)
    implementation: str = flax.struct.field(pytree_node=False, default="blockwise")

    def mask_and_bias(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, k_valid_BxS: Optional[jax.Array]):
        """The dense mask [B, 1, T, S] and ALiBi bias [B, H, T, S] (or None) of these queries and keys."""
        mask = attention_mask(
            q_pos_BxT,
            k_pos_BxS,
            causal=self.causal,
            window=self.window,
            block_size=self.block_size,
            num_global=self.num_global,
            k_valid_BxS=k_valid_BxS,
        )
        bias = None
        if self.alibi_slopes is not None:
            bias = alibi_bias(jnp.asarray(self.alibi_slopes, jnp.float32), q_pos_BxT, k_pos_BxS, self.causal)
        return mask, bias

    def attend(
        self, q_BxTxHxDh: jax.Array, k_BxKxSxDh: jax.Array, v_BxKxSxDh: jax.Array, scale: Optional[float]
    ) -> jax.Array:
        """softmax(q k^T * scale + bias, masked) v [B, T, H, Dh], as dot_product_attention with this pattern's mask
        and bias; scale None: 1 / sqrt(Dh)."""
        if self.implementation == "cudnn":
            return fused_attention(q_BxTxHxDh, k_BxKxSxDh, v_BxKxSxDh, self, scale, "cudnn")
        return blockwise_attention(q_BxTxHxDh, k_BxKxSxDh, v_BxKxSxDh, self, scale)


def blockwise_attention(
    q_BxTxHxDh: jax.Array,
    k_BxKxSxDh: jax.Array,
    v_BxKxSxDh: jax.Array,
    pattern: AttentionPattern,
    scale: Optional[float],
    block: int = QUERY_BLOCK,
) -> jax.Array:
    """Attention over query blocks of `block` (the last padded), one after another under lax.map, each
    rematerialised in the backward pass: the peak holds one block's scores and probabilities [B, H, block, keys],
    not [B, H, T, S]. A sliding window over contiguous positions reads only the block + window - 1 keys its block
    can see (its start clamped into the keys; the mask hides the rest)."""
    B, T, H, Dh = q_BxTxHxDh.shape
    S = k_BxKxSxDh.shape[2]
    block = min(block, T)
    n = -(-T // block)
    q_pos_BxT = pattern.q_pos_BxT
    if n * block > T:
        q_BxTxHxDh = jnp.pad(q_BxTxHxDh, ((0, 0), (0, n * block - T), (0, 0), (0, 0)))
        q_pos_BxT = jnp.pad(q_pos_BxT, ((0, 0), (0, n * block - T)), mode="edge")
    windowed = pattern.contiguous and pattern.window is not None and block + pattern.window - 1 < S
    width = block + pattern.window - 1 if windowed else S
    k_valid_BxS = pattern.k_valid_BxS

    def one_block(args):
        i, q_BxNxHxDh, q_pos_BxN = args
        lo = jnp.clip(i * block - pattern.window + 1, 0, S - width) if windowed else 0
        keys = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, lo, width, axis)  # noqa: E731
        mask, bias = pattern.mask_and_bias(
            q_pos_BxN, keys(pattern.k_pos_BxS, 1), None if k_valid_BxS is None else keys(k_valid_BxS, 1)
        )
        return dot_product_attention(
            q_BxNxHxDh, keys(k_BxKxSxDh, 2), keys(v_BxKxSxDh, 2), mask, bias, with_weights=False, scale=scale
        )[0]

    z_NxBxbxHxDh = jax.lax.map(
        jax.checkpoint(one_block),
        (
            jnp.arange(n),
            q_BxTxHxDh.reshape(B, n, block, H, Dh).swapaxes(0, 1),
            q_pos_BxT.reshape(B, n, block).swapaxes(0, 1),
        ),
    )
    return z_NxBxbxHxDh.swapaxes(0, 1).reshape(B, n * block, H, Dh)[:, :T]


def fused_attention(
    q_BxTxHxDh: jax.Array,
    k_BxKxSxDh: jax.Array,
    v_BxKxSxDh: jax.Array,
    pattern: AttentionPattern,
    scale: Optional[float],
    implementation: str,
) -> jax.Array:
    """jax.nn.dot_product_attention with the pattern's mask as its arguments (is_causal, local_window_size), for
    a pattern mask_unsupported accepts; `implementation` "cudnn" (a GPU: cudnn_unsupported must accept it) or
    "xla" (anywhere: the same arguments, for tests)."""
    reason = (
        cudnn_unsupported(pattern, q_BxTxHxDh.dtype, q_BxTxHxDh.shape[-1])
        if implementation == "cudnn"
        else mask_unsupported(pattern)
    )
    if reason:
        raise ValueError(f"jax.nn.dot_product_attention cannot take this attention: {reason}")
    window = None if pattern.window is None else (pattern.window - 1, 0 if pattern.causal else pattern.window - 1)
    return jax.nn.dot_product_attention(
        q_BxTxHxDh,
        k_BxKxSxDh.swapaxes(1, 2),
        v_BxKxSxDh.swapaxes(1, 2),
        scale=scale,
        is_causal=pattern.causal,
        local_window_size=window,
        implementation=implementation,
    )


def cudnn_unsupported(pattern: AttentionPattern, dtype, head_dim: int) -> Optional[str]:
    """Why cuDNN's flash attention cannot run this attention (None: it can): it takes bfloat16 or float16, head
    widths that are multiples of 8 up to 128, a causal or windowed mask of contiguous positions, and no ALiBi
    bias or padding here (both would be [B, H, T, S] arrays again)."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"dtype {jnp.dtype(dtype).name}: cuDNN flash attention takes bfloat16 or float16"
    if head_dim % 8 or head_dim > 128:
        return f"head width {head_dim}: cuDNN flash attention takes multiples of 8 up to 128"
    return mask_unsupported(pattern)


def mask_unsupported(pattern: AttentionPattern) -> Optional[str]:
    """Why jax.nn.dot_product_attention's arguments cannot say this pattern's mask and bias without [B, H, T, S]
    arrays (None: they can)."""
    if pattern.block_size is not None:
        return "block-sparse attention"
    if pattern.alibi_slopes is not None:
        return "ALiBi: its bias would be a [B, H, T, S] array"
    if pattern.k_valid_BxS is not None:
        return "padding: it would be a [B, H, T, S] mask"
    if not pattern.contiguous:
        return "positions other than 0..T-1"
    return None
