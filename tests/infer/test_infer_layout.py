"""The serving layout: dense kernels held [out, in], and projections of one input fused into one, give the same
outputs as the trained layout, for every kind of dense layer, at few rows (weight-first products) and many;
int8 scales follow the new layout."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import loaded, random_ids
from mulm_jax.infer.layout import FEW_ROWS, KERNEL_T, serving_layout, to_serving_layout
from mulm_jax.infer.quantize import Int8Weight, dequantize, quantize_params

VARIANTS = {
    "tied-no-bias": dict(use_bias=False),
    "untied-biases-gqa": dict(tie_embeddings=False, use_bias=True, positional="rope", num_kv_heads=2),
    "swiglu-mqa": dict(ffn="swiglu", positional="rope", num_kv_heads=1),
    "swiglu-gqa-qk-norm-biases": dict(ffn="swiglu", positional="rope", num_kv_heads=2, qk_norm=True, use_bias=True),
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


def as_out_by_in(path: tuple[str, ...], kernel) -> np.ndarray:
    in_ndim = 2 if path[-2] == "out" else 1  # attention's output kernel is [heads, head_dim, D]
    return np.asarray(kernel).reshape(int(np.prod(kernel.shape[:in_ndim])), -1).T


@pytest.mark.parametrize("variant", ["untied-biases-gqa", "swiglu-gqa-qk-norm-biases", "encoder-decoder"])
def test_every_dense_kernel_becomes_one_out_by_in_matrix_and_projections_of_one_input_one_matrix(variant):
    lm = loaded(num_layers=1, **{"tie_embeddings": False, "use_bias": True, **VARIANTS[variant]})
    before = flax.traverse_util.flatten_dict(lm.params)
    after = flax.traverse_util.flatten_dict(to_serving_layout(lm.model, lm.params))
    assert not [p for p in after if p[-1] == "kernel"]  # every dense layer the model calls was rewritten
    fused = {"query": "qkv", "key": "qkv", "value": "qkv", "gate": "gate_up"}
    fused["up"] = "gate_up" if lm.config.model.ffn == "swiglu" else None
    members = {"qkv": ("query", "key", "value"), "gate_up": ("gate", "up")}
    checked = set()
    for path, leaf in before.items():
        module, name = path[:-2], path[-2]
        group = None if "cross_attention" in path else fused.get(name)  # cross-attention's inputs differ
        if group is not None:
            if (*module, group) not in checked:
                parts = [(*module, m, path[-1]) for m in members[group]]
                want = [
                    as_out_by_in(p, before[p]) if p[-1] == "kernel" else np.asarray(before[p]).reshape(-1)
                    for p in parts
                ]
                got = after[(*module, group, KERNEL_T if path[-1] == "kernel" else "bias")]
                np.testing.assert_array_equal(got, np.concatenate(want))
                assert not any((*module, m, KERNEL_T) in after for m in members[group])
            checked.add((*module, group, path[-1]))
        elif path[-1] == "kernel":
            np.testing.assert_array_equal(after[(*path[:-1], KERNEL_T)], as_out_by_in(path, leaf))
        else:
            np.testing.assert_array_equal(after[path], leaf)  # embeddings, norms and other biases as they were
    expected_groups = {"qkv"} | ({"gate_up"} if lm.config.model.ffn == "swiglu" else set())
    assert {g for *_, g, _ in checked} == expected_groups


def test_int8_fused_projections_give_the_logits_of_the_int8_trained_layout():
    # One scale per output row: quantizing the fused matrix is quantizing each projection on its own.
    lm = loaded(num_layers=2, **VARIANTS["swiglu-gqa-qk-norm-biases"])
    ids = jnp.asarray(random_ids(1, 3, seed=2))
    with serving_layout():
        got = jax.jit(lambda p, x: apply(lm, dequantize(p), x))(
            quantize_params(to_serving_layout(lm.model, lm.params)), ids
        )
    np.testing.assert_allclose(got, apply(lm, dequantize(quantize_params(lm.params)), ids), atol=2e-5, rtol=1e-5)


def test_int8_scales_one_per_output_row_of_a_serving_kernel():
    lm = loaded(num_layers=1, d_model=32, d_ff=64)
    q = quantize_params(to_serving_layout(lm.model, lm.params))
    up = q["decoder"]["layer_0"]["ffn"]["up"][KERNEL_T]
    assert isinstance(up, Int8Weight) and up.q.shape == (64, 32) and up.scale.shape == (64, 1)
    w = np.asarray(lm.params["decoder"]["layer_0"]["ffn"]["up"]["kernel"]).T
    back = np.asarray(dequantize(q)["decoder"]["layer_0"]["ffn"]["up"][KERNEL_T])
    assert np.all(np.abs(back - w) <= up.scale / 2 + 1e-7)
