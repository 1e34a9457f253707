"""`python -m mulm_jax data assemble | list`: the command line over data.assemble."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from mulm_jax.config import DataConfig, add_config_arguments, load_config
from mulm_jax.config_schema import add_flags, flag_values
from mulm_jax.data.assemble import assemble, list_versions
from mulm_jax.data.sources import GENERATED_SOURCES, NAMED_SOURCES

NOT_FLAGS = ("dataset",)  # the DataConfig fields `data assemble` has no flag for: it makes a data set, it reads none


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="assemble and list data sets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    d = DataConfig()

    asm = commands.add_parser(
        "assemble", help="build a versioned data set from sources",
        description="Clean, dedup, split and tokenize sources into OUT/<version>/ (reused when it exists). "
                    f"Named sources: {', '.join(f'{n} ({s.about})' for n, s in NAMED_SOURCES.items())}. "
                    f"Generated: {', '.join(f'{n} ({about})' for n, about in GENERATED_SOURCES.items())}.")
    add_flags(asm, DataConfig, exclude=NOT_FLAGS)
    asm.add_argument("--json", action="store_true", help="print the manifest as the last line of stdout")
    add_config_arguments(asm)
    asm.set_defaults(func=run_assemble)

    lst = commands.add_parser("list", help="list the versions in a folder")
    lst.add_argument("--out", metavar="DIR", default=d.out_dir, help=f"folder of versions (default {d.out_dir})")
    lst.add_argument("--json", action="store_true", help="print the manifests as one JSON list")
    lst.set_defaults(func=run_list)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The `data` section of --config / --set (defaults without), with the flags given on top."""
    base = load_config(args.config, args.overrides).data if args.config or args.overrides else DataConfig()
    return dataclasses.replace(base, **flag_values(args, DataConfig, exclude=NOT_FLAGS))


def run_assemble(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = assemble(data_config(args))
    m = result.manifest
    verb = "reused (cache hit)" if result.reused else "assembled"
    print(f"{verb} {result.path} in {time.perf_counter() - start:.1f} s: {m['tokenizer']['kind']} vocab "
          f"{m['vocab_size']}, train {m['train_tokens']:,} tokens, val {m['val_tokens']:,} tokens, "
          f"{m['documents']['train']} + {m['documents']['val']} documents")
    if args.json:
        print(json.dumps(m, sort_keys=True, ensure_ascii=False))
    return 0


def run_list(args: argparse.Namespace) -> int:
    manifests = list_versions(args.out)
    if args.json:
        print(json.dumps(manifests, sort_keys=True, ensure_ascii=False))
        return 0
    if not manifests:
        print(f"no data sets in {args.out}")
    for m in manifests:
        sources = ", ".join(s["spec"] for s in m["sources"])
        print(f"{m['version']}  {m['tokenizer']['kind']:<19} vocab {m['vocab_size']:>6}  "
              f"train {m['train_tokens']:>11,}  val {m['val_tokens']:>10,}  {sources}")
    return 0
