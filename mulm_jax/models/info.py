"""`python -m mulm_jax info`: a model's architecture, parameter count by part, weight and KV-cache memory."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp

from mulm_jax.config import ModelConfig, add_config_arguments, config_from_args
from mulm_jax.models import build_model
from mulm_jax.nn.positional import TABLES

PARTS = ("embedding", "positional", "attention", "cross_attention", "ffn", "norm", "head")


def _part(path: tuple[str, ...]) -> str:
    names = "/".join(path)
    if "embedder/token" in names:
        return "embedding"
    if "embedder/position" in names:
        return "positional"
    if "embedder/head" in names:
        return "head"
    if "_norm" in names:
        return "norm"
    for part in ("cross_attention", "ffn"):
        if f"/{part}/" in names:
            return part
    if "/self_attention/" in names:
        return "attention"
    raise ValueError(f"parameter {names} belongs to no known part")


def param_shapes(cfg: ModelConfig) -> Any:
    """The parameter tree as ShapeDtypeStructs, without allocating or computing anything."""
    model = build_model(cfg)
    inputs, _ = model.window_inputs(jnp.zeros((1, 2), jnp.int32))
    return jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """Parameter counts by part and the memory figures that `info` prints."""
    counts: Counter[str] = Counter({p: 0 for p in PARTS})
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]:
        counts[_part(tuple(k.key for k in path))] += leaf.size
    total = sum(counts.values())
    kv_dtype_bytes = jnp.dtype(cfg.dtype).itemsize
    kv_per_token = 2 * cfg.decoder_layers * cfg.kv_heads * cfg.head_dim * kv_dtype_bytes
    kv_positions = cfg.sliding_window if _ring_cache(cfg) else cfg.max_seq_len
    return {
        "parameters": total,
        "parameters_by_part": dict(counts),
        "weights_bytes_float32": total * 4,
        "weights_bytes_bfloat16": total * 2,
        "kv_cache_bytes_per_token": kv_per_token,
        "kv_cache_bytes_full_context": kv_per_token * cfg.max_seq_len,
        "kv_cache_positions": kv_positions,  # per sequence: a sliding window's decoder keeps only its window
        "kv_cache_bytes_per_sequence": kv_per_token * kv_positions,
    }


def _ring_cache(cfg: ModelConfig) -> bool:
    return build_model(cfg).cache_window() is not None


def kv_cache_line(cfg: ModelConfig, info: dict[str, Any]) -> str:
    """The KV-cache figures of `describe` in words."""
    line = f"KV cache: {_size(info['kv_cache_bytes_per_token'])} per token ({cfg.dtype}), "
    if not _ring_cache(cfg):
        return line + f"{_size(info['kv_cache_bytes_full_context'])} per sequence at full context {cfg.max_seq_len}"
    reach = f"up to the context {cfg.max_seq_len}" if cfg.positional in TABLES else "at any length"
    return (line + f"{_size(info['kv_cache_bytes_per_sequence'])} per sequence: a ring of the sliding window's "
            f"{cfg.sliding_window} positions, {reach}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def architecture_line(cfg: ModelConfig) -> str:
    layers = build_model(cfg).layers_line()
    attn = {cfg.num_heads: "multi-head", 1: "multi-query"}.get(cfg.kv_heads, "grouped-query")
    pattern = {"full": "full", "sliding_window": f"sliding window {cfg.sliding_window}",
               "block_sparse": f"block-sparse {cfg.block_size} + {cfg.num_global_tokens} global"}[cfg.attention]
    return (f"{cfg.architecture}: {layers}, d_model {cfg.d_model}, {cfg.num_heads} heads / {cfg.kv_heads} kv heads "
            f"({attn}, {pattern}), head width {cfg.head_dim}, d_ff {cfg.ff_dim} ({cfg.ffn}), "
            f"{cfg.norm_position}-{cfg.norm}, positional {cfg.positional}, vocab {cfg.vocab_size}, "
            f"context {cfg.max_seq_len}, dtype {cfg.dtype}, tied embeddings {cfg.tie_embeddings}, "
            f"bias {cfg.use_bias}, dropout {cfg.dropout}")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args).model
    info = describe(cfg)
    if args.json:
        print(json.dumps({"architecture": cfg.architecture, **info}))
        return 0
    print(architecture_line(cfg))
    print(f"parameters: {info['parameters']:,}")
    for part, n in info["parameters_by_part"].items():
        if n:
            print(f"  {part:<16} {n:>14,}  {100 * n / info['parameters']:5.1f}%")
    print(f"weights: {_size(info['weights_bytes_float32'])} float32, {_size(info['weights_bytes_bfloat16'])} bfloat16")
    print(kv_cache_line(cfg, info))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("info", help="describe a model: parameters, weight and KV-cache memory")
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)
