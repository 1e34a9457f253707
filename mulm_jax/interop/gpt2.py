"""GPT-2 (GPT2LMHeadModel): fused c_attn, Conv1D weights stored [in, out], learned positions, tied head."""

from __future__ import annotations

from typing import Any

from mulm_jax.config import ModelConfig
from mulm_jax.interop.mapping import STANDARD_BLOCK, InteropError, Part, Tensor, one

ARCHITECTURE = "GPT2LMHeadModel"
# Buffers older checkpoints carry (the causal mask), not parameters.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}  # Flax's gelu is the tanh one


def model_config(hf: dict[str, Any], architecture: str, **overrides: Any) -> ModelConfig:
    """Our config for a GPT-2 config.json; settings with no counterpart raise InteropError naming them."""
    if overrides.get("max_seq_len", hf["n_positions"]) != hf["n_positions"]:
        raise InteropError(
            f"--max-seq-len {overrides['max_seq_len']}: GPT-2's learned position table has "
            f"n_positions={hf['n_positions']} rows; its context cannot be changed at import"
        )
    overrides.pop("max_seq_len", None)
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise InteropError(
            f"config.json: activation_function={activation!r} has no counterpart here; expected one "
            f"of {', '.join(ACTIVATIONS)}"
        )
    for key, want in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if hf.get(key, want) != want:
            raise InteropError(f"config.json: {key}={hf[key]!r} has no counterpart here (expected {want})")
    d_model = hf["n_embd"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d_model,
        max_seq_len=hf["n_positions"],
        positional="learned",
        norm="layernorm",
        norm_position="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        ffn=ACTIVATIONS[activation],
        tie_embeddings=hf.get("tie_word_embeddings", True),
        use_bias=True,
        **overrides,
    )


def export_problems(cfg: ModelConfig) -> list[str]:
    """The settings of `cfg` that GPT-2 cannot express (empty: it maps onto GPT-2)."""
    wanted = {
        "positional": "learned",
        "norm": "layernorm",
        "norm_position": "pre",
        "attention": "full",
        "use_bias": True,
        "scale_embeddings": False,
        "qk_norm": False,
        "logit_softcap": None,
        **STANDARD_BLOCK,
    }
    problems = [f"model.{k}={getattr(cfg, k)!r} (GPT-2: {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.ffn not in ("gelu", "relu"):
        problems.append(f"model.ffn={cfg.ffn!r} (GPT-2: 'gelu' or 'relu')")
    if cfg.kv_heads != cfg.num_heads:
        problems.append(f"model.num_kv_heads={cfg.kv_heads} (GPT-2 has as many kv heads as heads, {cfg.num_heads})")
    if cfg.qkv_bias is False:
        problems.append("model.qkv_bias=false (GPT-2 has biases on every projection)")
    return problems


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.ff_dim,
        "n_positions": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": "gelu_new" if cfg.ffn == "gelu" else "relu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def canonical_name(name: str) -> str:
    """GPT2Model checkpoints (the Hub's `gpt2`) leave out GPT2LMHeadModel's `transformer.` prefix."""
    return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name


def tensors(cfg: ModelConfig) -> list[Tensor]:
    D, H, Dh, F, V = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.ff_dim, cfg.vocab_size
    out = [
        one("transformer.wte.weight", "embedder/token/embedding", (V, D), "table"),
        one("transformer.wpe.weight", "embedder/position/embedding", (cfg.max_seq_len, D), "table"),
        one("transformer.ln_f.weight", "decoder/final_norm/scale", (D,)),
        one("transformer.ln_f.bias", "decoder/final_norm/bias", (D,)),
    ]
    if not cfg.tie_embeddings:
        out.append(one("lm_head.weight", "embedder/head/kernel", (D, V), "linear", 1))
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}", f"decoder/layer_{i}"
        attn = f"{ours}/self_attention"
        qkv = ("query", "key", "value")
        out += [
            one(f"{hf}.ln_1.weight", f"{ours}/self_attention_norm/scale", (D,)),
            one(f"{hf}.ln_1.bias", f"{ours}/self_attention_norm/bias", (D,)),
            Tensor(f"{hf}.attn.c_attn.weight", tuple(Part(f"{attn}/{n}/kernel", (D, H, Dh), 1) for n in qkv), "conv1d"),
            Tensor(f"{hf}.attn.c_attn.bias", tuple(Part(f"{attn}/{n}/bias", (H, Dh)) for n in qkv)),
            one(f"{hf}.attn.c_proj.weight", f"{attn}/out/kernel", (H, Dh, D), "conv1d", 2),
            one(f"{hf}.attn.c_proj.bias", f"{attn}/out/bias", (D,)),
            one(f"{hf}.ln_2.weight", f"{ours}/ffn_norm/scale", (D,)),
            one(f"{hf}.ln_2.bias", f"{ours}/ffn_norm/bias", (D,)),
            one(f"{hf}.mlp.c_fc.weight", f"{ours}/ffn/up/kernel", (D, F), "conv1d", 1),
            one(f"{hf}.mlp.c_fc.bias", f"{ours}/ffn/up/bias", (F,)),
            one(f"{hf}.mlp.c_proj.weight", f"{ours}/ffn/down/kernel", (F, D), "conv1d", 1),
            one(f"{hf}.mlp.c_proj.bias", f"{ours}/ffn/down/bias", (D,)),
        ]
    return out
