"""`python -m mulm_jax data assemble | list`: the command line over data.assemble."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing

from mulm_jax.config import DataConfig, add_config_arguments, load_config
from mulm_jax.data.assemble import assemble, list_versions
from mulm_jax.data.clean import SPLIT_MODES
from mulm_jax.data.dedup import DedupMode
from mulm_jax.data.sources import GENERATED_SOURCES, NAMED_SOURCES, InvalidUtf8

# flag -> DataConfig field, for the flags whose value is a DataConfig field of the same meaning.
_FIELD_FLAGS = {
    "source": "sources", "tokenizer": "tokenizer", "vocab_size": "vocab_size", "val_fraction": "val_fraction",
    "seq_len": "seq_len", "out": "out_dir", "text_field": "text_field", "invalid_utf8": "invalid_utf8",
    "fold_whitespace": "fold_whitespace", "min_doc_chars": "min_doc_chars", "max_doc_chars": "max_doc_chars",
    "split_documents": "split_documents", "dedup": "dedup", "near_dup_threshold": "near_dup_threshold",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="assemble and list data sets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    d = DataConfig()

    asm = commands.add_parser(
        "assemble", help="build a versioned data set from sources",
        description="Clean, dedup, split and tokenize sources into OUT/<version>/ (reused when it exists). "
                    f"Named sources: {', '.join(f'{n} ({s.about})' for n, s in NAMED_SOURCES.items())}. "
                    f"Generated: {', '.join(f'{n} ({about})' for n, about in GENERATED_SOURCES.items())}.")
    asm.add_argument("--source", action="append", metavar="SRC",
                     help="a named source, file (.txt, .jsonl, optionally .gz), folder or glob; repeatable")
    asm.add_argument("--tokenizer", metavar="TOK", help=f"char, bpe, unigram, a SentencePiece .model file or a "
                                                        f"run folder (its tokenizer; default {d.tokenizer})")
    asm.add_argument("--vocab-size", type=int, metavar="N", help="vocabulary size for bpe / unigram")
    asm.add_argument("--val-fraction", type=float, metavar="F",
                     help=f"share of text held out for validation (default {d.val_fraction})")
    asm.add_argument("--seq-len", type=int, metavar="L", help="check that each split holds a window of L + 1 tokens")
    asm.add_argument("--out", metavar="DIR", help=f"folder of versions (default {d.out_dir})")
    asm.add_argument("--text-field", metavar="NAME", help=f"JSONL field holding the text (default {d.text_field})")
    asm.add_argument("--invalid-utf8", choices=typing.get_args(InvalidUtf8), help=f"default {d.invalid_utf8}")
    asm.add_argument("--fold-whitespace", action=argparse.BooleanOptionalAction,
                     help="collapse runs of spaces, trim lines, keep at most one blank line in a row")
    asm.add_argument("--min-doc-chars", type=int, metavar="N", help=f"default {d.min_doc_chars}")
    asm.add_argument("--max-doc-chars", type=int, metavar="N", help="default: no limit")
    asm.add_argument("--split-documents", choices=SPLIT_MODES, help="default: the source's own scheme, else none")
    asm.add_argument("--dedup", choices=typing.get_args(DedupMode), help=f"default {d.dedup}")
    asm.add_argument("--near-dup-threshold", type=float, metavar="J", help=f"default {d.near_dup_threshold}")
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
    given = {field: getattr(args, flag) for flag, field in _FIELD_FLAGS.items() if getattr(args, flag) is not None}
    if "sources" in given:
        given["sources"] = tuple(given["sources"])
    return dataclasses.replace(base, **given)


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
