"""Phi-3 (Phi3ForCausalLM): a Llama-style model whose fused qkv_proj and gate_up_proj are split at import, with
LongRoPE (long / short factors) and an optional sliding window."""

from __future__ import annotations

from typing import Any

from mulm_jax.config import ModelConfig
from mulm_jax.interop import llama
from mulm_jax.interop.mapping import Part, Tensor

ARCHITECTURE = "Phi3ForCausalLM"
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
canonical_name = llama.canonical_name


def model_config(hf: dict[str, Any], architecture: str, **overrides: Any) -> ModelConfig:
    return llama.model_config(hf, architecture, **overrides)


def tensors(cfg: ModelConfig) -> list[Tensor]:
    out = llama.common_tensors(cfg)
    for i in range(cfg.num_layers):
        out += layer_tensors(cfg, i)
    return out


def layer_tensors(cfg: ModelConfig, i: int) -> list[Tensor]:
    """Phi-3's layer i: q, k and v in one qkv_proj, gate and up in one gate_up_proj."""
    D, H, K, Dh, F = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim
    hf, ours = f"model.layers.{i}", f"decoder/layer_{i}"
    return [
        Tensor(
            f"{hf}.self_attn.qkv_proj.weight",
            tuple(
                Part(f"{ours}/self_attention/{n}/kernel", (D, h, Dh), 1)
                for n, h in (("query", H), ("key", K), ("value", K))
            ),
            "linear",
        ),
        Tensor(
            f"{hf}.mlp.gate_up_proj.weight",
            tuple(Part(f"{ours}/ffn/{n}/kernel", (D, F), 1) for n in ("gate", "up")),
            "linear",
        ),
    ]
