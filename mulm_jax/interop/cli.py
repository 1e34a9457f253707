"""`python -m mulm_jax convert from-hf SRC --out RUN_DIR` and `convert to-hf RUN_DIR --out DIR`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def register(subparsers: Any) -> None:
    convert = subparsers.add_parser("convert", help="import a Hugging Face model as a run, or export a run to one")
    sub = convert.add_subparsers(dest="direction", required=True)
    imp = sub.add_parser("from-hf", help="a transformers model folder (safetensors, config.json, tokenizer) -> a run")
    imp.add_argument("src", metavar="SRC", help="a folder written by transformers' save_pretrained")
    imp.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder to write (must not exist)")
    imp.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the run's weights and compute dtype (default: float32)",
    )
    imp.add_argument(
        "--max-seq-len",
        type=int,
        help="the run's context (default: the model's "
        "max_position_embeddings; a server keeps this many positions "
        "per slot)",
    )
    imp.set_defaults(func=run_from_hf)
    exp = sub.add_parser("to-hf", help="a run (GPT-2 or Llama-shaped) -> a folder transformers loads")
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist)")
    exp.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    exp.set_defaults(func=run_to_hf)


def run_from_hf(args: argparse.Namespace) -> int:
    from mulm_jax.interop.convert import from_hf

    start = time.perf_counter()
    out = from_hf(args.src, args.out, dtype=args.dtype, max_seq_len=args.max_seq_len)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_to_hf(args: argparse.Namespace) -> int:
    from mulm_jax.interop.convert import to_hf

    out, note = to_hf(args.run_dir, args.out, args.step)
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return 0
