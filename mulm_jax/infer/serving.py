"""The weights a loaded run is served with on this backend: dtype, layout and int8 (see mulm_jax.platform)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mulm_jax import platform
from mulm_jax.infer.layout import to_serving_layout
from mulm_jax.infer.loading import LoadedModel
from mulm_jax.infer.quantize import Int8Weight, dequantize, quantize_params
from mulm_jax.models import build_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServingWeights:
    model: nn.Module  # the run's model, computing in the serving dtype
    params: Any  # on the device, as stored for serving: in the serving dtype, int8, [out, in] kernels on the CPU
    unpack: Callable[[Any], Any]  # stored params -> the params the model takes; runs inside the compiled steps
    weight_first: bool  # dense kernels held [out, in]: the steps must be traced under infer.layout.serving_layout()


def _cast_floats(params: Any, dtype: Any) -> Any:
    """Floating leaves in `dtype`; int8 weights keep their float32 scales."""
    cast = lambda w: w.astype(dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w  # noqa: E731
    return jax.tree.map(
        lambda w: w if isinstance(w, Int8Weight) else cast(w), params, is_leaf=lambda w: isinstance(w, Int8Weight)
    )


def serving_weights(loaded: LoadedModel, int8: bool = False) -> ServingWeights:
    """`loaded`'s model and params as this backend serves them.

    Weights are stored in platform.serving_dtype(model.dtype): bfloat16 for a bfloat16 config on a GPU or TPU,
    float32 on the CPU whatever the config says. int8 weights (one float32 scale per output channel) are
    quantized from the trained float weights and turned back into the serving dtype inside the compiled steps,
    where each conversion feeds its matmul directly.
    """
    cfg = loaded.config.model
    dtype = platform.serving_dtype(cfg.dtype)
    model = loaded.model
    if dtype != cfg.dtype:
        log.warning(
            "serving in %s on the %s although model.dtype is %s: XLA:CPU has no fast %s arithmetic",
            dtype,
            platform.backend().upper(),
            cfg.dtype,
            cfg.dtype,
        )
        model = build_model(dataclasses.replace(cfg, dtype=dtype))
    weight_first = platform.weight_first_serving()
    params = to_serving_layout(model, loaded.params) if weight_first else loaded.params
    if int8:
        stored = _cast_floats(quantize_params(params), jnp.dtype(dtype))
        unpack = functools.partial(dequantize, dtype=jnp.dtype(dtype))
    else:
        stored, unpack = _cast_floats(params, jnp.dtype(dtype)), (lambda p: p)
    return ServingWeights(model, jax.device_put(stored), unpack, weight_first)
