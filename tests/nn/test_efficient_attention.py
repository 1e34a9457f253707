"""Memory-efficient self-attention (blockwise, and jax.nn.dot_product_attention's arguments for cuDNN) against the
dense path, in value and gradient, for every mask they express; and the platform's choice between them."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulm_jax import platform
from mulm_jax.config import ModelConfig
from mulm_jax.errors import MulmError
from mulm_jax.models import build_model
from mulm_jax.models.masks import self_attention_inputs
from mulm_jax.nn.attention import dot_product_attention
from mulm_jax.nn.efficient_attention import AttentionPattern, blockwise_attention, fused_attention
from mulm_jax.nn.positional import alibi_slope_values

B, T, H, Dh = 2, 50, 4, 8


def qkv(K=H, S=T, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, T, H, Dh)),
        jax.random.normal(kk, (B, K, S, Dh)),
        jax.random.normal(kv, (B, K, S, Dh)),
    )


def positions(n, offset=0):
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32) + offset, (B, n))


def dense(pattern, q, k, v, scale=None):
    mask, bias = pattern.mask_and_bias(pattern.q_pos_BxT, pattern.k_pos_BxS, pattern.k_valid_BxS)
    return dot_product_attention(q, k, v, mask, bias, with_weights=False, scale=scale)[0]


def assert_same_value_and_gradient(attend, reference, q, k, v):
    """Equal outputs, and equal gradients of a random projection of them with respect to q, k and v (1e-5)."""
    w = jax.random.normal(jax.random.key(9), reference(q, k, v).shape)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)  # noqa: E731
    out, ref = jax.jit(attend)(q, k, v), jax.jit(reference)(q, k, v)
    chex.assert_equal_shape([out, ref])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    grads = jax.jit(jax.grad(loss(attend), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-5)


VALID = jnp.asarray(np.arange(T)[None, :] < np.array([[T], [31]]))  # the second row padded after 31 keys

PATTERNS = {
    "causal": dict(causal=True, contiguous=True),
    "causal, any positions": dict(causal=True),
    "sliding window": dict(causal=True, window=12, contiguous=True),
    "window wider than a block": dict(causal=True, window=40, contiguous=True),
    "bidirectional, padded": dict(causal=False, k_valid_BxS=VALID, contiguous=True),
    "causal, padded": dict(causal=True, k_valid_BxS=VALID, contiguous=True),
    "ALiBi": dict(causal=True, alibi_slopes=alibi_slope_values(H), contiguous=True),
    "ALiBi, window": dict(causal=True, window=9, alibi_slopes=(0.5, 0.25, 0.125, 0.0625), contiguous=True),
}


@pytest.mark.parametrize(
    "name, K", [(name, (H, 2, 1)[i % 3]) for i, name in enumerate(PATTERNS)]
)  # multi-head, grouped-query and multi-query in turn
def test_blockwise_equals_dense_attention_in_value_and_gradient(name, K):
    pattern = AttentionPattern(positions(T), positions(T), **PATTERNS[name])
    q, k, v = qkv(K)
    assert_same_value_and_gradient(
        lambda q, k, v: blockwise_attention(q, k, v, pattern, None, block=16),  # 4 blocks, the last of 2 queries
        lambda q, k, v: dense(pattern, q, k, v),
        q,
        k,
        v,
    )


def test_blockwise_with_positions_offset_and_unscaled_scores():
    """Positions that do not start at 0 (not contiguous: every block sees every key, the mask decides) and scores
    without the 1/sqrt(Dh) scale."""
    pattern = AttentionPattern(positions(T, 100), positions(T, 100), causal=True, window=7)
    q, k, v = qkv()
    assert_same_value_and_gradient(
        lambda q, k, v: blockwise_attention(q, k, v, pattern, 1.0, block=16),
        lambda q, k, v: dense(pattern, q, k, v, scale=1.0),
        q,
        k,
        v,
    )


@pytest.mark.parametrize("name, K", [("causal", H), ("sliding window", 2), ("window wider than a block", 1)])
def test_jax_dot_product_attention_takes_the_pattern_as_its_arguments(name, K):
    """fused_attention's translation (is_causal, local_window_size, [B, S, K, Dh] keys) is the one the cuDNN path
    uses; XLA's implementation of the same call runs here."""
    pattern = AttentionPattern(positions(T), positions(T), **PATTERNS[name])
    q, k, v = qkv(K)
    assert_same_value_and_gradient(
        lambda q, k, v: fused_attention(q, k, v, pattern, None, "xla"),
        lambda q, k, v: dense(pattern, q, k, v),
        q,
        k,
        v,
    )


@pytest.mark.parametrize(
    "name, expected",
    [("ALiBi", "ALiBi"), ("causal, padded", "padding"), ("causal, any positions", "positions other than 0..T-1")],
)
def test_jax_dot_product_attention_refuses_what_it_cannot_express(name, expected):
    pattern = AttentionPattern(positions(T), positions(T), **PATTERNS[name])
    with pytest.raises(ValueError, match=expected):
        fused_attention(*qkv(), pattern, None, "xla")


def test_platform_chooses_dense_below_the_scores_limit_and_blockwise_above_on_the_cpu():
    assert platform.backend() == "cpu"
    assert platform.attention_implementation("auto", platform.DENSE_SCORES_BYTES, None) == "dense"
    assert platform.attention_implementation("auto", platform.DENSE_SCORES_BYTES + 1, None) == "blockwise"
    assert platform.attention_implementation("dense", 1 << 40, None) == "dense"
    assert platform.attention_implementation("blockwise", 1, None) == "blockwise"
    with pytest.raises(MulmError, match="model.attention_impl=cudnn cannot run: this backend is cpu"):
        platform.attention_implementation("cudnn", 1, None)


def small_config(**kw):
    return ModelConfig(**{**dict(vocab_size=40, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=T), **kw})


@pytest.mark.parametrize(
    "kw",
    [
        dict(positional="rope"),
        pytest.param(dict(positional="alibi", num_kv_heads=2), marks=pytest.mark.slow),
        pytest.param(dict(attention="sliding_window", sliding_window=10, scan_layers=True), marks=pytest.mark.slow),
        pytest.param(
            dict(architecture="encoder_decoder", num_encoder_layers=1, num_decoder_layers=1, positional="sinusoidal"),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["rope", "alibi-gqa", "window-scanned", "encoder-decoder"],
)
def test_a_model_trains_the_same_with_blockwise_attention(kw):
    """The whole model's logits and parameter gradients with model.attention_impl=blockwise equal the dense
    model's (the same parameters), through remat."""
    cfg = small_config(attention_impl="dense", **kw)
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, 40)
    args = (ids, ids) if cfg.architecture == "encoder_decoder" else (ids,)
    dense_model, blockwise_model = (
        build_model(dataclasses.replace(cfg, attention_impl=impl), remat=True) for impl in ("dense", "blockwise")
    )
    params = dense_model.init(jax.random.key(0), *args)

    def loss(model):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(model.apply(p, *args) ** 2)))

    (value, grads), (ref_value, ref_grads) = loss(blockwise_model)(params), loss(dense_model)(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-5)


def test_a_long_window_selects_blockwise_and_generation_keeps_the_dense_mask():
    cfg = small_config(max_seq_len=4096)
    long_pos = jnp.broadcast_to(jnp.arange(4096, dtype=jnp.int32), (8, 4096))  # 2 GiB of scores a layer
    mask, bias, pattern = self_attention_inputs(cfg, long_pos, long_pos, causal=True, whole_pass=True)
    assert mask is None and bias is None and pattern.implementation == "blockwise"
    mask, bias, pattern = self_attention_inputs(cfg, long_pos, long_pos, causal=True, whole_pass=False)
    assert pattern is None and mask.shape == (8, 1, 4096, 4096)
    short_pos = positions(T)
    assert self_attention_inputs(cfg, short_pos, short_pos, causal=True, whole_pass=True)[2] is None


def test_blockwise_training_step_holds_less_memory_than_dense():
    """XLA's own account of the compiled gradient: at 1,024 tokens the dense scores and probabilities dominate;
    blockwise holds a block's at a time."""
    cfg = ModelConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4, d_ff=128, max_seq_len=1024)
    ids = jnp.zeros((2, 1024), jnp.int32)

    def temp_bytes(impl):
        model = build_model(dataclasses.replace(cfg, attention_impl=impl))
        params = jax.eval_shape(model.init, jax.random.key(0), ids)
        grad = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(p, ids) ** 2)))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    dense_bytes, blockwise_bytes = temp_bytes("dense"), temp_bytes("blockwise")
    scores = 4 * 2 * 4 * 1024 * 1024  # one layer's float32 scores
    assert dense_bytes > 2 * scores
    assert blockwise_bytes < dense_bytes / 3, (blockwise_bytes, dense_bytes)
