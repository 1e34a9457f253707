"""Llama-style models: LlamaForCausalLM (GQA, RMSNorm, SwiGLU, RoPE and its scalings), MistralForCausalLM
(sliding window), Qwen2ForCausalLM (q/k/v biases); phi3.py builds Phi-3 on these."""

from __future__ import annotations

import math
from typing import Any, Optional

from mulm_jax.config import ModelConfig, RopeScaling
from mulm_jax.interop.mapping import STANDARD_BLOCK, InteropError, Tensor, one

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # a buffer some older checkpoints carry


def canonical_name(name: str) -> str:
    return name


def rope_settings(hf: dict[str, Any]) -> tuple[float, Optional[RopeScaling], int]:
    """(theta, scaling, HF's max_position_embeddings) from config.json, in transformers 5's `rope_parameters` or
    the older `rope_theta` + `rope_scaling`; scalings computed as transformers' modeling_rope_utils does."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:
        params = dict(hf.get("rope_scaling") or {}, rope_theta=hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind in ("su", "yarn") and hf.get("model_type") == "phi3":  # Phi-3's older names for longrope
        kind = "longrope"
    theta, max_pos = float(params.get("rope_theta", hf.get("rope_theta", 10000.0))), hf["max_position_embeddings"]
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise InteropError(
            f"config.json: partial_rotary_factor={params.get('partial_rotary_factor')} has no "
            "counterpart here (RoPE turns the whole head)"
        )
    original = params.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings") or max_pos
    factor = params.get("factor")
    if kind == "default":
        return theta, None, max_pos
    if kind in ("linear", "dynamic"):
        # dynamic: transformers stretches the base once a sequence passes max_position_embeddings.
        return theta, RopeScaling(type=kind, factor=float(factor), original_max_seq_len=max_pos), max_pos
    if kind == "llama3":
        return (
            theta,
            RopeScaling(
                type="llama3",
                factor=float(factor),
                original_max_seq_len=original,
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
            ),
            max_pos,
        )
    if kind == "yarn":
        factor = float(factor or max_pos / original)
        mscale = lambda m=1.0: 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0  # noqa: E731
        attention_factor = params.get("attention_factor")  # None: ours derives it from the factor as transformers
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        if attention_factor is None and m and m_all:
            attention_factor = mscale(m) / mscale(m_all)
        return (
            theta,
            RopeScaling(
                type="yarn",
                factor=factor,
                original_max_seq_len=original,
                beta_fast=float(params.get("beta_fast") or 32),
                beta_slow=float(params.get("beta_slow") or 1),
                truncate=bool(params.get("truncate", True)),
                attention_factor=float(attention_factor or 0.0),
            ),
            max_pos,
        )
    if kind == "longrope":
        stretch = float(factor or max_pos / original)
        attention_factor = params.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if stretch <= 1 else math.sqrt(1 + math.log(stretch) / math.log(original))
        return (
            theta,
            RopeScaling(
                type="longrope",
                original_max_seq_len=original,
                long_factor=tuple(map(float, params["long_factor"])),
                short_factor=tuple(map(float, params["short_factor"])),
                attention_factor=float(attention_factor),
            ),
            max_pos,
        )
    raise InteropError(
        f"config.json: rope type {kind!r} has no counterpart here; expected one of default, linear, "
        "dynamic, yarn, llama3, longrope"
    )


def sliding_window(hf: dict[str, Any], layers: int) -> Optional[int]:
    """The window of every layer, or None for full attention; a window on some layers only has no counterpart."""
    window = hf.get("sliding_window")
    types = hf.get("layer_types")
    if hf.get("model_type") == "qwen2" and types is None:  # transformers 4: sliding layers from max_window_layers on
        sliding = hf.get("use_sliding_window", False)
        types = [
            "sliding_attention" if sliding and i >= hf.get("max_window_layers", layers) else "full_attention"
            for i in range(layers)
        ]
    if types is not None:
        kinds = set(types)
        if kinds == {"full_attention"}:
            return None
        if kinds != {"sliding_attention"}:
            raise InteropError(
                f"config.json: layer_types mixes {sorted(kinds)}; a sliding window on some layers "
                "only has no counterpart here"
            )
    return window


def model_config(hf: dict[str, Any], architecture: str, **overrides: Any) -> ModelConfig:
    """Our config for a Llama / Mistral / Qwen2 / Phi-3 config.json; settings with no counterpart raise
    InteropError naming them."""
    if hf.get("hidden_act", "silu") != "silu":
        raise InteropError(f"config.json: hidden_act={hf['hidden_act']!r} has no counterpart here (expected 'silu')")
    d_model, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d_model // heads):
        raise InteropError(
            f"config.json: head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads = "
            f"{d_model // heads}; a head width of its own has no counterpart here"
        )
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias or mlp_bias:
        raise InteropError(
            f"config.json: attention_bias={attention_bias}, mlp_bias={mlp_bias}: biases on the output "
            "or feed-forward projections have no counterpart for this architecture here"
        )
    theta, scaling, max_pos = rope_settings(hf)
    layers = hf["num_hidden_layers"]
    window = sliding_window(hf, layers)
    max_seq_len = overrides.pop("max_seq_len", None) or (
        int(max_pos * scaling.factor) if scaling is not None and scaling.type == "dynamic" else max_pos
    )
    if window is not None and window >= max_seq_len:  # a window as long as the context hides nothing
        window = None
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=max_seq_len,
        positional="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        attention="full" if window is None else "sliding_window",
        sliding_window=window,
        norm="rmsnorm",
        norm_position="pre",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        ffn="swiglu",
        tie_embeddings=hf.get("tie_word_embeddings", False),
        use_bias=False,
        qkv_bias=True if architecture == "Qwen2ForCausalLM" else None,
        **overrides,
    )


def export_problems(cfg: ModelConfig) -> list[str]:
    """The settings of `cfg` that Llama cannot express (empty: it maps onto LlamaForCausalLM)."""
    wanted = {
        "positional": "rope",
        "norm": "rmsnorm",
        "norm_position": "pre",
        "ffn": "swiglu",
        "attention": "full",
        "use_bias": False,
        "scale_embeddings": False,
        "qk_norm": False,
        "logit_softcap": None,
        **STANDARD_BLOCK,
    }
    problems = [f"model.{k}={getattr(cfg, k)!r} (Llama: {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.qkv_bias:
        problems.append("model.qkv_bias=true (Llama's attention_bias also puts a bias on the output projection)")
    if cfg.rope_scaling is not None and cfg.rope_scaling.type == "ntk":
        problems.append("model.rope_scaling.type='ntk' (transformers has only the dynamic kind of NTK scaling)")
    return problems


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    max_pos, rope = cfg.max_seq_len, {"rope_type": "default", "rope_theta": cfg.rope_theta}
    s = cfg.rope_scaling
    if s is not None:
        original = s.original_max_seq_len or cfg.max_seq_len
        rope = {"rope_type": s.type, "rope_theta": cfg.rope_theta, "factor": s.factor}
        if s.type == "dynamic":
            max_pos = original
        elif s.type == "llama3":
            rope.update(
                original_max_position_embeddings=original,
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
            )
        elif s.type == "yarn":
            rope.update(
                original_max_position_embeddings=original,
                beta_fast=s.beta_fast,
                beta_slow=s.beta_slow,
                truncate=s.truncate,
                attention_factor=s.attention_factor or None,
            )
        elif s.type == "longrope":
            rope.update(
                original_max_position_embeddings=original,
                long_factor=list(s.long_factor),
                short_factor=list(s.short_factor or (1.0,) * (cfg.head_dim // 2)),
                attention_factor=s.attention_factor or None,
            )
            rope.pop("factor")
        rope = {k: v for k, v in rope.items() if v is not None}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.ff_dim,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_parameters": rope,
    }


def attention_tensors(cfg: ModelConfig, hf: str, ours: str) -> list[Tensor]:
    """o_proj and, with Qwen2's biases, the q/k/v biases: what every Llama-style layer has."""
    D, H, K, Dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
    out = [one(f"{hf}.o_proj.weight", f"{ours}/out/kernel", (H, Dh, D), "linear", 2)]
    if cfg.qkv_bias:
        out += [
            one(f"{hf}.{p}_proj.bias", f"{ours}/{n}/bias", (h, Dh))
            for p, n, h in (("q", "query", H), ("k", "key", K), ("v", "value", K))
        ]
    return out


def common_tensors(cfg: ModelConfig) -> list[Tensor]:
    """Embedding, head, norms and the output projections; the q/k/v and gate/up projections are the model's own."""
    D, V, F = cfg.d_model, cfg.vocab_size, cfg.ff_dim
    out = [
        one("model.embed_tokens.weight", "embedder/token/embedding", (V, D), "table"),
        one("model.norm.weight", "decoder/final_norm/scale", (D,)),
    ]
    if not cfg.tie_embeddings:
        out.append(one("lm_head.weight", "embedder/head/kernel", (D, V), "linear", 1))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"decoder/layer_{i}"
        out += [
            one(f"{hf}.input_layernorm.weight", f"{ours}/self_attention_norm/scale", (D,)),
            one(f"{hf}.post_attention_layernorm.weight", f"{ours}/ffn_norm/scale", (D,)),
            one(f"{hf}.mlp.down_proj.weight", f"{ours}/ffn/down/kernel", (F, D), "linear", 1),
            *attention_tensors(cfg, f"{hf}.self_attn", f"{ours}/self_attention"),
        ]
    return out


def tensors(cfg: ModelConfig) -> list[Tensor]:
    D, H, K, Dh, F = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim
    out = common_tensors(cfg)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"decoder/layer_{i}"
        out += [
            one(f"{hf}.self_attn.{p}_proj.weight", f"{ours}/self_attention/{n}/kernel", (D, h, Dh), "linear", 1)
            for p, n, h in (("q", "query", H), ("k", "key", K), ("v", "value", K))
        ]
        out += [one(f"{hf}.mlp.{p}_proj.weight", f"{ours}/ffn/{p}/kernel", (D, F), "linear", 1) for p in ("gate", "up")]
    return out
