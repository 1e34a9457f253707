"""Whole models against forward passes written in numpy from the formulas: GPT-2, Llama, the 2017 Transformer."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from support import random_ids, random_params, tiny_model
from mulm_jax.models import build_model


def gpt2_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    out = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p["scale"]
    return out + p["bias"] if "bias" in p else out


def rms_norm(x, p, eps=1e-5):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * p["scale"]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dense(x, p, axes: int = 1):
    """x times the kernel, contracting x's last `axes` axes with the kernel's first, plus the bias if any."""
    out = np.tensordot(x, p["kernel"], axes=axes)
    return out + p["bias"] if "bias" in p else out


def rope(x_TxHxDh, theta: float = 10000.0):
    """Rotate-half RoPE: pair (x_j, x_{j+Dh/2}) at position t turned by the angle t / theta^(2j / Dh)."""
    T, _, Dh = x_TxHxDh.shape
    angle_TxF = np.arange(T)[:, None] / theta ** (np.arange(0, Dh, 2) / Dh)
    cos, sin = np.cos(angle_TxF)[:, None], np.sin(angle_TxF)[:, None]
    x1, x2 = x_TxHxDh[..., : Dh // 2], x_TxHxDh[..., Dh // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(x_TxD, source_SxD, p, causal: bool, use_rope: bool = False):
    """Multi-head attention of T queries over S keys; each of the K kv heads serves H / K consecutive query heads."""
    q_TxHxDh, k_SxKxDh, v_SxKxDh = dense(x_TxD, p["query"]), dense(source_SxD, p["key"]), dense(source_SxD, p["value"])
    if use_rope:
        q_TxHxDh, k_SxKxDh = rope(q_TxHxDh), rope(k_SxKxDh)
    T, H, Dh = q_TxHxDh.shape
    group = H // k_SxKxDh.shape[1]
    out_TxHxDh = np.zeros_like(q_TxHxDh)
    for h in range(H):
        scores_TxS = q_TxHxDh[:, h] @ k_SxKxDh[:, h // group].T / math.sqrt(Dh)
        if causal:
            scores_TxS = np.where(np.tril(np.ones(scores_TxS.shape, bool)), scores_TxS, -np.inf)
        out_TxHxDh[:, h] = softmax(scores_TxS) @ v_SxKxDh[:, h // group]
    return dense(out_TxHxDh, p["out"], axes=2)


def sinusoids(T: int, D: int):
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D))."""
    angle_TxD = np.arange(T)[:, None] / 10000 ** (2 * (np.arange(D) // 2) / D)
    return np.where(np.arange(D) % 2 == 0, np.sin(angle_TxD), np.cos(angle_TxD))


def gpt2(p, ids_T):
    """Learned positions, pre-LayerNorm blocks, GELU MLP, final LayerNorm, head tied to the token embedding."""
    x = p["embedder"]["token"]["embedding"][ids_T] + p["embedder"]["position"]["embedding"][: len(ids_T)]
    for name in sorted(k for k in p["decoder"] if k.startswith("layer_")):
        b = p["decoder"][name]
        h = layer_norm(x, b["self_attention_norm"])
        x = x + attention(h, h, b["self_attention"], causal=True)
        x = x + dense(gpt2_gelu(dense(layer_norm(x, b["ffn_norm"]), b["ffn"]["up"])), b["ffn"]["down"])
    return layer_norm(x, p["decoder"]["final_norm"]) @ p["embedder"]["token"]["embedding"].T


def llama(p, ids_T):
    """RoPE on queries and keys, pre-RMSNorm blocks, SwiGLU, grouped kv heads, untied head, no biases."""
    x = p["embedder"]["token"]["embedding"][ids_T]
    for name in sorted(k for k in p["decoder"] if k.startswith("layer_")):
        b = p["decoder"][name]
        h = rms_norm(x, b["self_attention_norm"])
        x = x + attention(h, h, b["self_attention"], causal=True, use_rope=True)
        h = rms_norm(x, b["ffn_norm"])
        gate = dense(h, b["ffn"]["gate"])
        x = x + dense(gate / (1 + np.exp(-gate)) * dense(h, b["ffn"]["up"]), b["ffn"]["down"])
    return rms_norm(x, p["decoder"]["final_norm"]) @ p["embedder"]["head"]["kernel"]


def transformer(p, src_S, tgt_T):
    """Vaswani et al.: embeddings times sqrt(D) plus sinusoids, post-LayerNorm blocks, ReLU, tied output layer."""
    E = p["embedder"]["token"]["embedding"]
    embed = lambda ids: E[ids] * math.sqrt(E.shape[1]) + sinusoids(len(ids), E.shape[1])  # noqa: E731
    ffn = lambda x, f: dense(np.maximum(dense(x, f["up"]), 0), f["down"])  # noqa: E731
    memory = embed(src_S)
    for b in (p["encoder"][k] for k in sorted(p["encoder"])):
        memory = layer_norm(
            memory + attention(memory, memory, b["self_attention"], causal=False), b["self_attention_norm"]
        )
        memory = layer_norm(memory + ffn(memory, b["ffn"]), b["ffn_norm"])
    x = embed(tgt_T)
    for b in (p["decoder"][k] for k in sorted(p["decoder"])):
        x = layer_norm(x + attention(x, x, b["self_attention"], causal=True), b["self_attention_norm"])
        x = layer_norm(x + attention(x, memory, b["cross_attention"], causal=False), b["cross_attention_norm"])
        x = layer_norm(x + ffn(x, b["ffn"]), b["ffn_norm"])
    return x @ E.T


def params_for(model, *inputs):
    """Random weights with norm scales drawn around 1 too (so that a scale applied wrongly shows), as float64."""
    rng = np.random.default_rng(7)
    params = random_params(model, *inputs)["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: np.asarray(x, np.float64) + (rng.normal(0, 0.2, x.shape) if path[-1].key == "scale" else 0),
        params,
    )


MODELS = {
    "gpt2": (gpt2, dict(positional="learned", norm="layernorm", ffn="gelu", tie_embeddings=True, use_bias=True)),
    "llama": (
        llama,
        dict(positional="rope", norm="rmsnorm", ffn="swiglu", num_kv_heads=2, tie_embeddings=False, use_bias=False),
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_decoder_equals_its_numpy_forward_pass(name):
    reference, overrides = MODELS[name]
    model = build_model(tiny_model(num_layers=2, **overrides))
    ids = random_ids(2, 12, seed=1)
    params = params_for(model, ids)
    logits = jax.jit(model.apply)({"params": jax.tree.map(np.float32, params)}, ids)
    np.testing.assert_allclose(logits, np.stack([reference(params, row) for row in ids]), atol=1e-5, rtol=1e-5)


def test_encoder_decoder_equals_its_numpy_forward_pass():
    model = build_model(
        tiny_model(
            architecture="encoder_decoder",
            num_encoder_layers=2,
            num_decoder_layers=2,
            positional="sinusoidal",
            norm_position="post",
            ffn="relu",
            scale_embeddings=True,
        )
    )
    src, tgt = random_ids(2, 9, seed=2), random_ids(2, 7, seed=3)
    params = params_for(model, src, tgt)
    logits = jax.jit(model.apply)({"params": jax.tree.map(np.float32, params)}, src, tgt)
    np.testing.assert_allclose(
        logits, np.stack([transformer(params, s, t) for s, t in zip(src, tgt)]), atol=1e-5, rtol=1e-5
    )
