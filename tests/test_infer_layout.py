"""The serving layout: dense kernels held [out, in] give the same outputs as the trained layout, for every kind
of dense layer, at few rows (weight-first products) and many; int8 scales follow the new layout."""

from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import loaded, random_ids
from mulm_jax.infer.layout import FEW_ROWS, KERNEL_T, serving_layout, to_serving_layout
from mulm_jax.infer.quantize import Int8Weight, dequantize, quantize_params

VARIANTS = {
    "tied-no-bias": dict(use_bias=False),
    "untied-biases-gqa": dict(tie_embeddings=False, use_bias=True, positional="rope", num_kv_heads=2),
    "swiglu-mqa": dict(ffn="swiglu", positional="rope", num_kv_heads=1),
    "encoder-decoder": dict(architecture="encoder_decoder", positional="sinusoidal"),
}


def apply(lm, params, ids):
    if lm.config.model.architecture == "encoder_decoder":
        return lm.model.apply({"params": params}, ids, ids)
    return lm.model.apply({"params": params}, ids)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,length", [(1, 1), (2, 4), (4, 16)], ids=["1-row", "8-rows", "64-rows"])
def test_serving_layout_gives_the_same_logits(variant, batch, length):
    lm = loaded(num_layers=2, **VARIANTS[variant])
    served = to_serving_layout(lm.model, lm.params)
    ids = jnp.asarray(random_ids(batch, length, seed=batch))
    assert (batch * length <= FEW_ROWS) == (length < 16)  # both product paths are covered
    with serving_layout():
        got = jax.jit(lambda p, x: apply(lm, p, x))(served, ids)
    np.testing.assert_allclose(got, apply(lm, lm.params, ids), atol=2e-5, rtol=1e-5)


def test_every_dense_kernel_becomes_one_out_by_in_matrix():
    lm = loaded(num_layers=1, tie_embeddings=False, use_bias=True, num_kv_heads=2)
    before = flax.traverse_util.flatten_dict(lm.params)
    after = flax.traverse_util.flatten_dict(to_serving_layout(lm.model, lm.params))
    assert not [p for p in after if p[-1] == "kernel"]  # every dense layer the model calls was rewritten
    for path, kernel in before.items():
        if path[-1] != "kernel":
            np.testing.assert_array_equal(after[path], kernel)  # embeddings, norms and biases as they were
            continue
        moved = after[(*path[:-1], KERNEL_T)]
        in_ndim = 2 if path[-2] == "out" else 1  # attention's output kernel is [heads, head_dim, D]
        inputs = int(np.prod(kernel.shape[:in_ndim]))
        chex.assert_shape(moved, (kernel.size // inputs, inputs))
        np.testing.assert_array_equal(moved, np.asarray(kernel).reshape(inputs, -1).T)


def test_int8_scales_one_per_output_row_of_a_serving_kernel():
    lm = loaded(num_layers=1, d_model=32, d_ff=64)
    q = quantize_params(to_serving_layout(lm.model, lm.params))
    up = q["decoder"]["layer_0"]["ffn"]["up"][KERNEL_T]
    assert isinstance(up, Int8Weight) and up.q.shape == (64, 32) and up.scale.shape == (64, 1)
    w = np.asarray(lm.params["decoder"]["layer_0"]["ffn"]["up"]["kernel"]).T
    back = np.asarray(dequantize(q)["decoder"]["layer_0"]["ffn"]["up"][KERNEL_T])
    assert np.all(np.abs(back - w) <= up.scale / 2 + 1e-7)
