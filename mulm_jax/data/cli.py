"""`python -m mulm_jax data assemble | list | show | tokenize`: the command line over data.assemble, and one text
under several tokenizers (data.tokenizer_compare)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from mulm_jax.config import DataConfig, add_config_arguments, load_config
from mulm_jax.config_schema import add_flags, flag_values
from mulm_jax.data.assemble import assemble, list_versions
from mulm_jax.data.loader import show_examples
from mulm_jax.data.errors import DataError
from mulm_jax.data.sources import GENERATED_SOURCES, NAMED_SOURCES
from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.data.tokenizer_compare import ACCEPTED, Tokenization, compare

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

    tok = commands.add_parser(
        "tokenize",
        help="one text under several tokenizers, side by side",
        description="Tokenize one text under each tokenizer named: a table of tokens and characters per token, then "
        "each one's pieces (separated by |, whitespace shown as ␣ ↵ ⇥, an empty piece as ∅), ids and the words "
        "it splits into more than one token.",
    )
    tok.add_argument(
        "--compare", nargs="+", required=True, metavar="SPEC", help=f"a tokenizer: {ACCEPTED}; several side by side"
    )
    given = tok.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="the text")
    given.add_argument("--text-file", metavar="F", help="a UTF-8 file holding the text")
    tok.add_argument("--merges", action="store_true", help="each BPE piece's merges, in the order BPE makes them")
    tok.add_argument("--json", action="store_true", help="print the tokenizations as one JSON list")
    tok.set_defaults(func=run_tokenize)


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


def run_tokenize(args: argparse.Namespace) -> int:
    text = args.text
    if text is None:
        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--text-file {args.text_file!r} cannot be read as UTF-8 text: {e}") from None
    results = compare(args.compare, text)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], ensure_ascii=False))
        return 0
    width = max(len("tokenizer"), *(len(r.name) for r in results))
    print(f"{len(text)} characters")
    print(f"{'tokenizer':<{width}}  {'kind':<13} {'algorithm':<9} {'vocab':>7} {'tokens':>7} {'chars/token':>11} split")
    for r in results:
        per_token = "—" if r.chars_per_token is None else f"{r.chars_per_token:.2f}"
        print(
            f"{r.name:<{width}}  {r.kind:<13} {r.algorithm:<9} {r.vocab_size:>7} {len(r.tokens):>7} {per_token:>11} "
            f"{len(r.split_words)}"
        )
    for r in results:
        print_tokenization(r, args.merges)
    return 0


def visible(text: str) -> str:
    """A token's text with its whitespace shown, as the lab shows it (draw.js `visible`)."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def print_tokenization(r: Tokenization, merges: bool) -> None:
    what = r.kind if r.algorithm == r.kind else f"{r.kind} {r.algorithm}"
    print(f"\n{r.name} ({what}, vocab {r.vocab_size}): {len(r.tokens)} tokens")
    print("  pieces: " + "|".join(visible(t.text) for t in r.tokens))
    print("  ids:    " + " ".join(str(t.id) for t in r.tokens))
    if r.split_words:
        print(
            "  split:  "
            + ", ".join(f"{w.word} = {'|'.join(visible(r.tokens[i].text) for i in w.tokens)}" for w in r.split_words)
        )
    if merges and r.merges is not None:
        print("  merges:")
        pieces = {t.id: t.piece for t in r.tokens}
        for i, sequence in r.merges.items():
            steps = ", ".join(f"{left} + {right} → {made}" for left, right, made in sequence)
            print(f"    {pieces[i]} ({i}): {steps}")
