"""`python -m mulm_jax data assemble | list`: the command line over data.assemble."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from mulm_jax.config import DataConfig, add_config_arguments, load_config
from mulm_jax.config_schema import add_flags, flag_values
from mulm_jax.data.assemble import assemble, list_versions
from mulm_jax.data.loader import show_examples
from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.data.sources import GENERATED_SOURCES, NAMED_SOURCES

NOT_FLAGS = ("dataset",)  # the DataConfig fields `data assemble` has no flag for: it makes a data set, it reads none


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="assemble and list data sets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    d = DataConfig()

    asm = commands.add_parser(
        "assemble",
        help="build a versioned data set from sources",
        description="Clean, dedup, split and tokenize sources into OUT/<version>/ (reused when it exists). "
        f"Named sources: {', '.join(f'{n} ({s.about})' for n, s in NAMED_SOURCES.items())}. "
        f"Generated: {', '.join(f'{n} ({about})' for n, about in GENERATED_SOURCES.items())}.",
    )
    add_flags(asm, DataConfig, exclude=NOT_FLAGS)
    asm.add_argument("--json", action="store_true", help="print the manifest as the last line of stdout")
    add_config_arguments(asm)
    asm.set_defaults(func=run_assemble)

    lst = commands.add_parser("list", help="list the versions in a folder")
    lst.add_argument("--out", metavar="DIR", default=d.out_dir, help=f"folder of versions (default {d.out_dir})")
    lst.add_argument("--json", action="store_true", help="print the manifests as one JSON list")
    lst.set_defaults(func=run_list)

    show = commands.add_parser(
        "show",
        help="a data set of pairs' examples with their loss mask",
        description="Print examples of a pairs data set, each token's text with the trained "
        "ones (the loss mask) in [brackets] and the end token as <eos>.",
    )
    show.add_argument("dataset", metavar="VERSION_DIR", help="an assembled version folder")
    show.add_argument("--split", default="train", choices=["train", "val"])
    show.add_argument("--start", type=int, default=0, metavar="I", help="the first example shown (default 0)")
    show.add_argument("--count", type=int, default=5, metavar="N", help="examples shown (default 5)")
    show.add_argument("--json", action="store_true", help="print them as one JSON list")
    show.set_defaults(func=run_show)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The `data` section of --config / --set (defaults without), with the flags given on top."""
    base = load_config(args.config, args.overrides).data if args.config or args.overrides else DataConfig()
    return dataclasses.replace(base, **flag_values(args, DataConfig, exclude=NOT_FLAGS))


def run_assemble(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = assemble(data_config(args))
    m = result.manifest
    verb = "reused (cache hit)" if result.reused else "assembled"
    what = "documents" if m.get("kind", "text") == "text" else f"{m['kind']} pairs"
    print(
        f"{verb} {result.path} in {time.perf_counter() - start:.1f} s: {m['tokenizer']['kind']} vocab "
        f"{m['vocab_size']}, train {m['train_tokens']:,} tokens, val {m['val_tokens']:,} tokens, "
        f"{m['documents']['train']} + {m['documents']['val']} {what}"
    )
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
        print(
            f"{m['version']}  {m['tokenizer']['kind']:<19} vocab {m['vocab_size']:>6}  "
            f"train {m['train_tokens']:>11,}  val {m['val_tokens']:>10,}  {sources}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    examples = show_examples(args.dataset, args.split, args.start, args.count)
    eos = Tokenizer.load(args.dataset).eos_id
    if args.json:
        print(json.dumps(examples, ensure_ascii=False))
        return 0
    for example in examples:
        text, trained = "", False
        for token in example["tokens"]:
            if token["loss"] != trained:
                text += "[" if token["loss"] else "]"
                trained = token["loss"]
            text += "<eos>" if token["id"] == eos else token["text"]
        print(f"{example['index']} ({example['file']}:{example['line']}): {text + ']' * trained!r}")
    return 0
