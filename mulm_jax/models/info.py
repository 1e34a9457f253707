"""`python -m mulm_jax info`: a model's architecture, parameter count by part, weight and KV-cache memory; the
data's tokens per epoch and the epochs that training makes."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp

from mulm_jax import platform
from mulm_jax.config import Config, ModelConfig, add_config_arguments, config_from_args
from mulm_jax.data.assemble import find_version, read_manifest
from mulm_jax.data.sources import known_train_bytes
from mulm_jax.models import build_model
from mulm_jax.nn.positional import TABLES

PARTS = ("embedding", "positional", "attention", "cross_attention", "ffn", "norm", "head")
# For an estimate before assembly: a character tokenizer makes about one token per byte of (mostly ASCII) text;
# SentencePiece about one per 4 bytes of English (3.9 for a 32,000-piece model trained on web text, measured on
# WikiText-2, and for the 8,000-piece BPE trained on it).
BYTES_PER_TOKEN = {"char": 1.0}
SENTENCEPIECE_BYTES_PER_TOKEN = 4.0


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
    return (
        line + f"{_size(info['kv_cache_bytes_per_sequence'])} per sequence: a ring of the sliding window's "
        f"{cfg.sliding_window} positions, {reach}"
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def architecture_line(cfg: ModelConfig) -> str:
    layers = build_model(cfg).layers_line()
    attn = {cfg.num_heads: "multi-head", 1: "multi-query"}.get(cfg.kv_heads, "grouped-query")
    pattern = {
        "full": "full",
        "sliding_window": f"sliding window {cfg.sliding_window}",
        "block_sparse": f"block-sparse {cfg.block_size} + {cfg.num_global_tokens} global",
    }[cfg.attention]
    mlp = f"d_ff {cfg.ff_dim} ({cfg.ffn})" if cfg.mlp == "ffn" else "no MLP (attention-only blocks)"
    ablations = {
        "no residual connections": not cfg.residual,
        "attention scores not scaled by 1/sqrt(head width)": cfg.attention_scale == "none",
    }
    return (
        f"{cfg.architecture}: {layers}, d_model {cfg.d_model}, {cfg.num_heads} heads / {cfg.kv_heads} kv heads "
        f"({attn}, {pattern}), head width {cfg.head_dim}, {mlp}, "
        f"{cfg.norm_position}-{cfg.norm}, positional {cfg.positional}, vocab {cfg.vocab_size}, "
        f"context {cfg.max_seq_len}, dtype {cfg.dtype}, tied embeddings {cfg.tie_embeddings}, "
        f"bias {cfg.use_bias}, dropout {cfg.dropout}" + "".join(f", {a}" for a, on in ablations.items() if on)
    )


def data_epochs(cfg: Config) -> dict[str, Any] | None:
    """The training split's tokens per epoch and the epochs `train.steps` makes of it: exact from the manifest of
    the data set training would read when it is assembled, else estimated from the sources' known sizes (None
    when they are not known); None for a config without data."""
    data, train = cfg.data, cfg.train
    if not (data.dataset or data.sources):
        return None
    tokens_per_step = train.batch_size * (train.seq_len or cfg.model.max_seq_len)
    out: dict[str, Any] = {"steps": train.steps, "tokens_per_step": tokens_per_step, "dataset": None}
    folder = find_version(data)
    if folder is not None:
        manifest = read_manifest(folder)
        out.update(dataset=str(folder), exact=True, tokens_per_epoch=manifest["train_tokens"])
        if manifest.get("kind", "text") == "text":
            out["epochs"] = train.steps * tokens_per_step / manifest["train_tokens"]
        else:  # pairs: the loader gives each example once per epoch, one per row
            examples = manifest["pairs"]["train_examples"]
            out.update(examples_per_epoch=examples, epochs=train.steps * train.batch_size / examples)
        return out
    sizes = [known_train_bytes(spec, data.val_fraction) for spec in data.sources]
    if data.dataset or None in sizes:
        return dict(out, exact=False, tokens_per_epoch=None, epochs=None)
    rate = BYTES_PER_TOKEN.get(data.tokenizer, SENTENCEPIECE_BYTES_PER_TOKEN)
    tokens = round(sum(sizes) / rate)
    return dict(
        out,
        exact=False,
        train_bytes=sum(sizes),
        bytes_per_token=rate,
        tokens_per_epoch=tokens,
        epochs=train.steps * tokens_per_step / tokens,
    )


def data_lines(cfg: Config, epochs: dict[str, Any]) -> list[str]:
    """`data_epochs` in words: what an epoch is, and what the training run makes of it."""
    data, train = cfg.data, cfg.train
    steps = f"{train.steps:,} steps x {train.batch_size:,}"
    if "examples_per_epoch" in epochs:
        return [
            f"data: {epochs['examples_per_epoch']:,} training examples per epoch (assembled: {epochs['dataset']})",
            f"training: {steps} examples = {train.steps * train.batch_size:,} examples, {epochs['epochs']:.2f} epochs",
        ]
    steps += (
        f" x {epochs['tokens_per_step'] // train.batch_size:,} = {train.steps * epochs['tokens_per_step']:,} tokens"
    )
    if epochs["exact"]:
        return [
            f"data: {epochs['tokens_per_epoch']:,} training tokens per epoch (assembled: {epochs['dataset']})",
            f"training: {steps}, {epochs['epochs']:.2f} epochs",
        ]
    if epochs["tokens_per_epoch"] is None:
        what = (
            f"data.dataset {data.dataset} holds no manifest"
            if data.dataset
            else "training tokens per epoch unknown until assembled (python -m mulm_jax data assemble --config ...)"
        )
        return [f"data: {what}", f"training: {steps}"]
    size = epochs["train_bytes"]
    size = f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} KB"
    return [
        f"data: ~{_rounded(epochs['tokens_per_epoch']):,} training tokens per epoch (estimated, not assembled: "
        f"a training split of about {size} from {', '.join(data.sources)}, at about "
        f"{epochs['bytes_per_token']:g} bytes per {data.tokenizer} token)",
        f"training: {steps}, ~{epochs['epochs']:.1f} epochs",
    ]


def _rounded(n: int) -> int:
    """Three significant digits, as much as an estimate knows."""
    return int(float(f"{n:.3g}"))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    cfg = config.model
    info = describe(cfg)
    epochs = data_epochs(config)
    if args.json:
        out = {"architecture": cfg.architecture, **info, "data": epochs}
        if args.train:
            from mulm_jax.train.memory import training_memory

            batch, seq_len = train_shape(config, args)
            out["train_memory"] = {
                "batch": batch,
                "seq_len": seq_len,
                **training_memory(
                    config, batch, seq_len, remat=args.remat, backend="gpu" if args.gpu else None
                ).as_dict(),
            }
        print(json.dumps(out))
        return 0
    print(architecture_line(cfg))
    print(f"parameters: {info['parameters']:,}")
    for part, n in info["parameters_by_part"].items():
        if n:
            print(f"  {part:<16} {n:>14,}  {100 * n / info['parameters']:5.1f}%")
    print(f"weights: {_size(info['weights_bytes_float32'])} float32, {_size(info['weights_bytes_bfloat16'])} bfloat16")
    print(kv_cache_line(cfg, info))
    for line in data_lines(config, epochs) if epochs else ():
        print(line)
    if args.train or args.fits:
        for line in train_memory_lines(config, args):
            print(line)
    return 0


def train_memory_lines(config: Config, args: argparse.Namespace) -> list[str]:
    """`info --train` and `--fits`: the training-memory plan (mulm_jax.train.memory) in words."""
    from mulm_jax.train import memory

    batch, seq_len = train_shape(config, args)
    remat = config.train.remat if args.remat is None else args.remat
    backend = "gpu" if args.gpu or args.fits else None
    plan = memory.training_memory(config, batch, seq_len, remat=remat, backend=backend)
    lines = memory.plan_lines(config, batch, seq_len, plan, remat, backend or platform.backend())
    if args.fits:
        budgets = [int(gb * 1e9) for gb in args.fits]
        scanned = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=True))
        off = memory.largest_batches(config, seq_len, budgets, remat=False, backend="gpu")
        on = memory.largest_batches(scanned, seq_len, budgets, remat=True, backend="gpu")  # remat holds when scanned
        for gb, largest_off, largest_on in zip(args.fits, off, on):
            lines.append(
                f"{gb:g} GB card, largest batch of {seq_len} tokens: remat off: {largest_off or 'none'}, "
                f"remat on: {largest_on or 'none'}"
            )
    return lines


def train_shape(config: Config, args: argparse.Namespace) -> tuple[int, int]:
    """The batch and window length `info --train` plans for: --batch and --seq-len, else the config's."""
    return args.batch or config.train.batch_size, args.seq_len or config.train.seq_len or config.model.max_seq_len


def card_sizes(text: str) -> list[float]:
    """--fits: card sizes in GB, comma-separated."""
    try:
        sizes = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fits {text!r}: expected card sizes in GB, e.g. 8,12,16,24") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"--fits {text!r}: expected positive sizes in GB, e.g. 8,12,16,24")
    return sizes


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a model: parameters, weight and KV-cache memory; the "
        "data's tokens per epoch and the epochs training makes",
    )
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    train = parser.add_argument_group(
        "training memory",
        "the memory one train step holds (dtype and optimizer: --set train.compute_dtype=... "
        "train.optimizer=...; docs/gpu.md#training-memory)",
    )
    train.add_argument("--train", action="store_true", help="plan a train step's memory, part by part")
    train.add_argument("--batch", type=int, help="windows per step (default: train.batch_size)")
    train.add_argument("--seq-len", type=int, help="tokens per window (default: train.seq_len)")
    train.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None, help="default: train.remat")
    train.add_argument("--gpu", action="store_true", help="plan for a GPU (its attention: cuDNN's where it runs)")
    train.add_argument(
        "--fits", type=card_sizes, metavar="GB,...", help="the largest batch that trains on each card size (a GPU)"
    )
    parser.set_defaults(func=run)
