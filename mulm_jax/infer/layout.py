"""The serving layout of dense weights: each kernel held as one [out, in] matrix, as PyTorch's nn.Linear holds it.

Training keeps Flax's [in..., out...] kernels. For decoding a few rows at a time XLA:CPU is much faster with the
weight stored [out, in] and made the left operand of the product (times_transposed): GPT-2 small's feed-forward
stack at 8 rows took 15-20 ms that way against 39-47 ms as x @ W[in, out] on the 2-core dev machine
(bench/bench_decode_matmul.py). `to_serving_layout` rewrites the params once, at load time, replacing each dense
layer's `kernel` by `kernel_t`; inside the compiled steps, under `serving_layout()`, every nn.Dense /
nn.DenseGeneral that finds a `kernel_t` makes that product instead of its own, and so does the tied output
layer (nn.Embed.attend). Modules without one (the params as trained) run as usual, so the same model code
serves both. Projections of one input (self-attention's query, key and value; SwiGLU's gate and up) are held as
one matrix, which the modules use when they find it: at batch 1 a decode step's fixed cost per product, not the
bytes it reads, dominates a small model's step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KERNEL_T = "kernel_t"


def _input_ndim(module: nn.Module, x_ndim: int) -> Optional[int]:
    """How many trailing axes of the input a dense layer contracts, or None if it cannot use the serving layout
    (contracted axes that are not the trailing ones, batch axes, a custom dot_general)."""
    if getattr(module, "dot_general", None) is not None or getattr(module, "dot_general_cls", None) is not None:
        return None
    if isinstance(module, nn.DenseGeneral):
        if module.batch_dims:
            return None
        axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
        trailing = tuple(range(x_ndim - len(axes), x_ndim))
        return len(axes) if tuple(sorted(a % x_ndim for a in axes)) == trailing else None
    return 1 if isinstance(module, nn.Dense) else None


def _features(module: nn.Module) -> tuple[int, ...]:
    return module.features if isinstance(module.features, tuple) else (module.features,)


FEW_ROWS = 32  # up to this many input rows, products are made weight-first (see times_transposed)


def times_transposed(x_NxI: jax.Array, w_OxI: jax.Array, precision: Any = None) -> jax.Array:
    """x @ w^T, [N, O], for w held [out, in].

    For a few rows (2 to FEW_ROWS) it is made as (w @ x^T)^T, the weight as the left operand, with an
    optimization barrier that keeps XLA from folding the transpose back into the product (it would then make
    x @ w^T): bench/bench_decode_matmul.py, GPT-2 small at 8 rows, 15-17 ms that way against 30-33 ms as
    x @ w^T. One row, and many, are made as x @ w^T.
    """
    if 1 < x_NxI.shape[0] <= FEW_ROWS:
        y_OxN = lax.dot_general(w_OxI, x_NxI, (((1,), (1,)), ((), ())), precision=precision)
        return lax.optimization_barrier(y_OxN).T
    return lax.dot_general(x_NxI, w_OxI, (((1,), (1,)), ((), ())), precision=precision)


def _product(next_fun, args, kwargs, context):
    """Interceptor: a dense layer holding `kernel_t` computes x @ kernel_t^T (+ bias) itself, and so does the
    tied output layer (nn.Embed.attend: its table is [vocab, D], already [out, in])."""
    module = context.module
    if context.method_name == "attend" and isinstance(module, nn.Embed):
        (query,) = args
        table_VxD = module.get_variable("params", "embedding")
        dtype = module.dtype or jnp.result_type(query, table_VxD)
        lead = query.shape[:-1]
        logits = times_transposed(query.reshape(-1, query.shape[-1]).astype(dtype), table_VxD.astype(dtype))
        return logits.reshape(*lead, table_VxD.shape[0])
    if (
        context.method_name != "__call__"
        or not isinstance(module, (nn.Dense, nn.DenseGeneral))
        or not module.has_variable("params", KERNEL_T)
    ):
        return next_fun(*args, **kwargs)
    (x,) = args
    in_ndim = _input_ndim(module, x.ndim)
    if in_ndim is None:
        raise ValueError(
            f"{'/'.join(module.path)} holds a {KERNEL_T} but cannot use it: its contracted axes are "
            "not the input's trailing ones"
        )
    kernel_OxI = module.get_variable("params", KERNEL_T)
    dtype = module.dtype or jnp.result_type(x, kernel_OxI)
    lead = x.shape[: x.ndim - in_ndim]
    x_NxI = x.reshape(math.prod(lead), -1).astype(dtype)
    y_NxO = times_transposed(x_NxI, kernel_OxI.astype(dtype), module.precision)
    if module.use_bias:
        y_NxO = y_NxO + module.get_variable("params", "bias").reshape(-1).astype(dtype)
    return y_NxO.reshape(*lead, *_features(module))


@contextlib.contextmanager
def serving_layout() -> Iterator[None]:
    """Within this block, model code applied to serving-layout params uses their [out, in] kernels."""
    with nn.intercept_methods(_product):
        yield


def _dense_layers(
    model: nn.Module, params: Any, *sample_inputs: Any
) -> tuple[dict[tuple[str, ...], int], dict[tuple[str, ...], dict[str, tuple[str, ...]]]]:
    """What `model.apply` on `sample_inputs` calls, traced abstractly (nothing is computed): for each dense layer that
    can use the serving layout, its module path -> how many leading kernel axes are input axes; and for each module
    with projections that may be held as one (its `fused_projections`), its path -> that table."""
    in_ndims: dict[tuple[str, ...], int] = {}
    fusions: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.DenseGeneral)) and args:
            in_ndim = _input_ndim(module, jnp.ndim(args[0]))
            if in_ndim is not None:
                in_ndims[tuple(module.path)] = in_ndim
        elif context.method_name == "__call__" and hasattr(module, "fused_projections"):
            fusions[tuple(module.path)] = module.fused_projections()
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda p: model.apply({"params": p}, *sample_inputs), params)
    return in_ndims, fusions


def _fuse(flat: dict[tuple[str, ...], Any], fusions: dict[tuple[str, ...], dict[str, tuple[str, ...]]]) -> None:
    """In `flat` (serving-layout leaves by path), each group of projections of one input becomes one `kernel_t`
    (and bias) with their output rows concatenated, where every member holds a `kernel_t`."""
    for module_path, table in fusions.items():
        for fused, members in table.items():
            paths = [(*module_path, name) for name in members]
            if not all((*path, KERNEL_T) in flat for path in paths):
                continue
            flat[(*module_path, fused, KERNEL_T)] = np.concatenate([flat.pop((*path, KERNEL_T)) for path in paths])
            biases = [flat.pop((*path, "bias"), None) for path in paths]
            if any(b is not None for b in biases):
                flat[(*module_path, fused, "bias")] = np.concatenate([np.asarray(b).reshape(-1) for b in biases])


def to_serving_layout(model: nn.Module, params: Any, fuse: bool = True) -> Any:
    """The params with each dense kernel [in..., out...] replaced by `kernel_t`, [prod(out), prod(in)], on the
    host, and the projections of one input that a module lists in its `fused_projections` (self-attention's query,
    key and value; SwiGLU's gate and up) held as one such matrix, so that a decode step makes one product for them
    instead of several (unless not `fuse`: bench/bench_fused_layout.py compares the two). Other leaves (embeddings,
    norms, other biases) are unchanged."""
    sample, _ = model.window_inputs(np.zeros((1, 2), np.int32))
    in_ndims, fusions = _dense_layers(model, params, *sample)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    out = {}
    for path, leaf in flat.items():
        *module_path, name = path
        in_ndim = in_ndims.get(tuple(module_path)) if name == "kernel" else None
        if in_ndim is None:
            out[path] = leaf
            continue
        kernel = np.asarray(leaf)
        inputs = math.prod(kernel.shape[:in_ndim])
        out[(*module_path, KERNEL_T)] = np.ascontiguousarray(kernel.reshape(inputs, -1).T)
    if fuse:
        _fuse(out, fusions)
    return flax.traverse_util.unflatten_dict(out)
