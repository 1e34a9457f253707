"""Weight-only int8: each weight matrix stored as int8 with one float32 scale per output channel.

Kernels and embedding tables become `Int8Weight`s (4x smaller at rest); biases and norm scales stay float.
Inside the compiled steps `dequantize` turns them back into the serving dtype (q * scale), each one feeding its
matmul directly, so that a GPU compiler can fuse the conversion into the product (infer.serving).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.infer.layout import KERNEL_T


@flax.struct.dataclass
class Int8Weight:
    q: jax.Array  # int8, the weight's shape
    scale: jax.Array  # float32, the weight's shape with the input axes reduced to 1


def _input_axes(path: tuple[str, ...], ndim: int) -> tuple[int, ...]:
    """The axes a weight is summed over when applied; the others index output channels.

    Dense kernels are [in, out]; attention's query/key/value kernels [D, heads, head_dim]; its output
    kernel [heads, head_dim, D]; kernels in the serving layout (infer.layout) [out, in]; embedding tables
    [vocab, D] (one scale per token row, which is both the looked-up vector and an output channel of the
    tied logits).
    """
    if path[-1] in ("embedding", KERNEL_T):
        return (1,)
    if len(path) >= 2 and path[-2] == "out" and ndim == 3:
        return (0, 1)
    return (0,)


def _quantize(path: tuple[str, ...], w: Any) -> Any:
    w = np.asarray(w)
    if w.ndim < 2 or path[-1] not in ("kernel", KERNEL_T, "embedding") or not np.issubdtype(w.dtype, np.floating):
        return w
    absmax = np.max(np.abs(w), axis=_input_axes(path, w.ndim), keepdims=True).astype(np.float32)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return Int8Weight(q=q, scale=scale)


def quantize_params(params: Any) -> Any:
    """The same tree with every kernel and embedding table as an Int8Weight (on the host, numpy)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    return flax.traverse_util.unflatten_dict({path: _quantize(path, w) for path, w in flat.items()})


def dequantize(params: Any, dtype: Any = jnp.float32) -> Any:
    """Float weights back from Int8Weights (leaves of other kinds pass through); meant to run under jit."""
    return jax.tree.map(
        lambda w: w.q.astype(dtype) * w.scale.astype(dtype) if isinstance(w, Int8Weight) else w,
        params,
        is_leaf=lambda w: isinstance(w, Int8Weight),
    )


def weight_bytes(params: Any) -> int:
    """Bytes the parameters take, int8 weights and their scales included."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
