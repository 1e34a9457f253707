"""`python -m mulm_jax eval perplexity | passkey`: a trained run scored at a chosen context length."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mulm_jax import startup
from mulm_jax.errors import MulmError

PASSKEY_DEPTHS = "0,0.25,0.5,0.75,1"


def register(subparsers: Any) -> None:
    ev = subparsers.add_parser("eval", help="score a trained run: sliding-window perplexity, passkey retrieval")
    commands = ev.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")

    ppl = commands.add_parser(
        "perplexity", help="sliding-window perplexity over the validation split or a text",
        description="Each token is scored once, in windows of --context tokens every --stride tokens, with as much "
                    "left context as the window allows.")
    _common(ppl)
    source = ppl.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="VERSION", help="a data set version (folder, or id in the run's "
                                                          "data.out_dir) whose val split to score (default: the run's)")
    source.add_argument("--text-file", metavar="F", help="a text file to score instead")
    ppl.add_argument("--context", type=int, metavar="N", help="window length (default: model.max_seq_len)")
    ppl.add_argument("--stride", type=int, metavar="S", help="tokens between windows (default: context / 2)")
    ppl.add_argument("--max-tokens", type=int, metavar="N", help="score only the first N tokens")
    ppl.add_argument("--by-position", action="store_true", help="also the mean loss by position in the window "
                                                                "(use --stride N to score every position of each)")
    ppl.add_argument("--buckets", type=int, default=8, metavar="K", help="position buckets for --by-position")
    ppl.set_defaults(func=run_perplexity)

    pk = commands.add_parser("passkey", help="passkey retrieval accuracy by length and depth")
    _common(pk)
    pk.add_argument("--lengths", required=True, metavar="L,...", help="tokens the model reads, e.g. 128,256,512")
    pk.add_argument("--depths", default=PASSKEY_DEPTHS, metavar="D,...",
                    help=f"where the key sits in the filler, 0 (start) to 1 (end); default {PASSKEY_DEPTHS}")
    pk.add_argument("--trials", type=int, default=20, help="random keys per length and depth (default 20)")
    pk.add_argument("--seed", type=int, default=0)
    pk.set_defaults(func=run_passkey)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a train.py --workdir")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="evaluate under another setting, e.g. model.max_seq_len=1024 model.rope_scaling.type=yarn "
                             "model.rope_scaling.factor=8")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    startup.add_startup_arguments(parser)


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise MulmError(f"{flag} {text!r}: expected comma-separated numbers, e.g. {PASSKEY_DEPTHS}") from None


def eval_tokens(loaded: Any, data: Optional[str], text_file: Optional[str]) -> np.ndarray:
    """The token ids to score: a text file encoded with the run's tokenizer, or a data set's val split (one made
    with the run's tokenizer): `data` (a version folder or id), else the run's own data set."""
    from mulm_jax.data import Tokenizer, load_tokens, prepare_dataset
    from mulm_jax.eval.scoring import EvalError

    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise EvalError(f"--text-file {text_file!r} does not exist")
        return np.asarray(loaded.tokenizer.encode(path.read_text(encoding="utf-8")), np.int32)
    if data is None:
        folder = prepare_dataset(loaded.config.data)
    else:
        folder = Path(data) if Path(data).is_dir() else Path(loaded.config.data.out_dir) / data
        if not folder.is_dir():
            raise EvalError(f"--data {data!r} is neither a data set folder nor a version in "
                            f"{loaded.config.data.out_dir}")
    if Tokenizer.load(folder).serialize() != loaded.tokenizer.serialize():
        raise EvalError(f"data set {folder} was made with another tokenizer than the run's: its ids would be "
                        "scored as other text")
    return load_tokens(folder, "val")


def run_perplexity(args: argparse.Namespace) -> int:
    startup.start(args)
    from mulm_jax.eval.perplexity import sliding_perplexity
    from mulm_jax.eval.scoring import WindowScorer, check_context, load_for_eval

    loaded = load_for_eval(args.checkpoint, args.overrides, args.step)
    context = args.context or loaded.config.model.max_seq_len
    check_context(loaded.config.model, context)
    tokens = eval_tokens(loaded, args.data, args.text_file)
    if args.max_tokens:
        tokens = tokens[:args.max_tokens + 1]
    start = time.perf_counter()
    result = sliding_perplexity(WindowScorer(loaded), tokens, context, args.stride, batch=args.batch,
                                buckets=args.buckets)
    seconds = time.perf_counter() - start
    if not args.by_position:
        result["by_position"] = []
    if args.json:
        print(json.dumps(dict(result, seconds=round(seconds, 2))))
        return 0
    print(f"{args.checkpoint} (step {loaded.step}), context {result['context']}, stride {result['stride']}: "
          f"{result['tokens']:,} tokens, loss {result['loss']:.4f}, ppl {result['ppl']:.3f} "
          f"({seconds:.1f} s, {result['tokens'] / seconds:,.0f} tokens/s)")
    for bucket in result["by_position"]:
        loss = "-" if bucket["loss"] is None else f"{bucket['loss']:.4f}"
        print(f"  positions {bucket['start']:>6}-{bucket['end'] - 1:<6} loss {loss}  ({bucket['tokens']:,} tokens)")
    return 0


def run_passkey(args: argparse.Namespace) -> int:
    startup.start(args)
    from mulm_jax.eval.passkey import passkey_accuracy
    from mulm_jax.eval.scoring import WindowScorer, check_context, load_for_eval

    lengths, depths = _numbers(args.lengths, int, "--lengths"), _numbers(args.depths, float, "--depths")
    loaded = load_for_eval(args.checkpoint, args.overrides, args.step)
    check_context(loaded.config.model, max(lengths))
    result = passkey_accuracy(WindowScorer(loaded), loaded.tokenizer, lengths, depths, args.trials, seed=args.seed,
                              batch=args.batch)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"passkey accuracy of {args.checkpoint} (step {loaded.step}), {args.trials} keys per cell")
    print("length  " + "".join(f"depth {d:<5g}" for d in depths) + "  mean")
    for length, row, mean in zip(lengths, result["accuracy"], result["by_length"]):
        print(f"{length:<8}" + "".join(f"{a:<11.2f}" for a in row) + f"  {mean:.2f}")
    return 0
