"""Feed-forward variants and pre-/post-norm blocks against plain numpy formulas."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from support import random_params, tiny_model
from mulm_jax.nn.attention import Attention, attention_mask
from mulm_jax.nn.blocks import Block, make_norm
from mulm_jax.nn.feedforward import FeedForward


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["relu", "relu2", "gelu", "swiglu"])
def test_feedforward_matches_its_formula(activation):
    ffn = FeedForward(d_model=6, d_ff=10, activation=activation)
    x = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
    params = random_params(ffn, x)
    y = jax.jit(ffn.apply)(params, x)
    chex.assert_shape(y, (2, 3, 6))
    p = jax.tree.map(np.asarray, params["params"])
    dense = lambda name, h: h @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    if activation == "swiglu":
        g = dense("gate", x)
        h = g / (1 + np.exp(-g)) * dense("up", x)
    else:
        h = dense("up", x)
        h = {"relu": np.maximum(h, 0), "relu2": np.maximum(h, 0) ** 2}.get(activation, gelu_tanh(h))
    np.testing.assert_allclose(y, dense("down", h), atol=1e-4)
    assert ("gate" in p) == (activation == "swiglu")


def test_rmsnorm_and_layernorm_match_their_formulas():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(2, 5, 8)).astype(np.float32)
    rms = make_norm(tiny_model(norm="rmsnorm", norm_eps=1e-6), "n")
    y = rms.apply(rms.init(jax.random.key(0), x), x)
    np.testing.assert_allclose(y, x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6), atol=1e-5)
    ln = make_norm(tiny_model(norm="layernorm", norm_eps=1e-6, use_bias=False), "n")
    params = ln.init(jax.random.key(0), x)
    assert "bias" not in params["params"]
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(ln.apply(params, x), expected, atol=1e-4)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
@pytest.mark.parametrize("ablation", [{}, {"residual": False}, {"mlp": "none"}], ids=["block", "no_residual", "no_mlp"])
def test_block_applies_residuals_around_normed_sublayers(norm_position, ablation):
    """Recompute a block from its own sublayers: pre = x + f(norm(x)); post = norm(x + f(x)); without the residual
    pre = f(norm(x)), post = norm(f(x)); without the MLP only the attention sublayer, and no MLP parameters."""
    cfg = tiny_model(norm_position=norm_position, norm="rmsnorm", ffn="relu", norm_eps=1e-6, **ablation)
    block = Block(cfg)
    x = np.random.default_rng(2).normal(size=(1, 4, 16)).astype(np.float32)
    pos = np.arange(4)[None]
    mask = attention_mask(pos, pos, causal=True)
    kwargs = dict(mask=mask, bias=None, q_pos_BxT=pos, k_pos_BxS=pos)
    params = random_params(block, x, **kwargs)
    y, _, _ = jax.jit(lambda x: block.apply(params, x, **kwargs))(x)

    p = params["params"]
    assert ("ffn" in p and "ffn_norm" in p) == (cfg.mlp == "ffn")
    rms = lambda h: h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6)  # noqa: E731  (scales are all 1)
    attn = Attention(num_heads=4, num_kv_heads=4, head_dim=4)

    def attend(h):
        return np.asarray(attn.apply({"params": p["self_attention"]}, h, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)[0])

    ffn = FeedForward(16, 32, "relu")
    feed = lambda h: np.asarray(ffn.apply({"params": p["ffn"]}, h))  # noqa: E731
    skip = (lambda h: h) if cfg.residual else (lambda h: 0.0)  # noqa: E731
    if norm_position == "pre":
        h = skip(x) + attend(rms(x))
        expected = h if cfg.mlp == "none" else skip(h) + feed(rms(h))
    else:
        h = rms(skip(x) + attend(x))
        expected = h if cfg.mlp == "none" else rms(skip(h) + feed(h))
    np.testing.assert_allclose(y, expected, atol=1e-4)
