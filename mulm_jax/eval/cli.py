"""`python -m mulm_jax eval perplexity | passkey | recall | seq2seq`: a trained run scored at a chosen context
length, or on its outputs for held-out pairs."""

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
    ev = subparsers.add_parser(
        "eval",
        help="score a trained run: sliding-window perplexity, passkey retrieval, associative recall, generation on "
        "pairs",
    )
    commands = ev.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")

    ppl = commands.add_parser(
        "perplexity",
        help="sliding-window perplexity over the validation split or a text",
        description="Each token is scored once, in windows of --context tokens every --stride tokens, with as much "
        "left context as the window allows. Also the summed loss in bits per UTF-8 byte and per "
        "character of the scored text, which compares across tokenizers.",
    )
    _common(ppl)
    source = ppl.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        metavar="VERSION",
        help="a data set version (folder, or id in the run's "
        "data.out_dir) whose val split to score (default: the run's)",
    )
    source.add_argument("--text-file", metavar="F", help="a text file to score instead")
    ppl.add_argument("--context", type=int, metavar="N", help="window length (default: model.max_seq_len)")
    ppl.add_argument("--stride", type=int, metavar="S", help="tokens between windows (default: context / 2)")
    ppl.add_argument("--max-tokens", type=int, metavar="N", help="score only the first N tokens")
    ppl.add_argument(
        "--by-position",
        action="store_true",
        help="also the mean loss by position in the window (use --stride N to score every position of each)",
    )
    ppl.add_argument("--buckets", type=int, default=8, metavar="K", help="position buckets for --by-position")
    ppl.set_defaults(func=run_perplexity)

    pk = commands.add_parser("passkey", help="passkey retrieval accuracy by length and depth")
    _common(pk)
    pk.add_argument("--lengths", required=True, metavar="L,...", help="tokens the model reads, e.g. 128,256,512")
    pk.add_argument(
        "--depths",
        default=PASSKEY_DEPTHS,
        metavar="D,...",
        help=f"where the key sits in the filler, 0 (start) to 1 (end); default {PASSKEY_DEPTHS}",
    )
    pk.add_argument("--trials", type=int, default=20, help="random keys per length and depth (default 20)")
    pk.add_argument("--seed", type=int, default=0)
    pk.set_defaults(func=run_passkey)

    rc = commands.add_parser(
        "recall",
        help="associative recall accuracy by length, distance and depth",
        description="Key-value pairs then every key asked for again, as the `recall` source writes them, at each "
        "length (as many pairs as fit, every one asked for in a random order); the accuracy of the greedy "
        "answers by length, by the query's distance to its pair (tokens) and by the pair's depth (its position / "
        "the length).",
    )
    _common(rc)
    rc.add_argument("--lengths", required=True, metavar="L,...", help="tokens the model reads, e.g. 64,128,256")
    rc.add_argument("--trials", type=int, default=20, help="random sequences per length (default 20)")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--plot", metavar="FILE", help="also draw the accuracy by depth x distance per length (PNG)")
    rc.set_defaults(func=run_recall)

    s2s = commands.add_parser(
        "seq2seq",
        help="exact match, chrF and BLEU of greedy outputs on a data set of pairs",
        description="Decode each held-out source (or prompt) greedily and compare the output with its target: exact "
        "match, and sacrebleu's chrF and corpus BLEU (with their signatures). An encoder-decoder trained "
        "on pairs reads the source through its encoder; a decoder continues the prompt.",
    )
    _common(s2s)
    s2s.add_argument(
        "--data",
        metavar="VERSION",
        help="a data set of pairs (folder, or id in the run's data.out_dir) "
        "made with the run's tokenizer (default: the run's)",
    )
    s2s.add_argument("--split", default="val", choices=["val", "train"], help="the examples scored (default val)")
    s2s.add_argument("--limit", type=int, metavar="N", help="score only the first N examples")
    s2s.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="longest output (default: the split's longest target with its end token)",
    )
    s2s.add_argument("--slots", type=int, default=32, help="sequences decoded together (default 32)")
    s2s.add_argument("--bleu-tokenize", default="13a", help="sacrebleu's BLEU tokenizer (default 13a)")
    s2s.add_argument("--show", type=int, default=5, metavar="N", help="list the first N wrong outputs (default 5)")
    s2s.set_defaults(func=run_seq2seq)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a train.py --workdir")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="evaluate under another setting, e.g. model.max_seq_len=1024 model.rope_scaling.type=yarn "
        "model.rope_scaling.factor=8",
    )
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
    from mulm_jax.data import load_tokens
    from mulm_jax.eval.scoring import EvalError

    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise EvalError(f"--text-file {text_file!r} does not exist")
        return np.asarray(loaded.tokenizer.encode(path.read_text(encoding="utf-8")), np.int32)
    return load_tokens(data_folder(loaded, data), "val")


def data_folder(loaded: Any, data: Optional[str]) -> Path:
    """The data set to score on: `data` (a version folder or id), else the run's own; made with the run's
    tokenizer."""
    from mulm_jax.data import Tokenizer, prepare_dataset
    from mulm_jax.eval.scoring import EvalError

    if data is None:
        folder = prepare_dataset(loaded.config.data)
    else:
        folder = Path(data) if Path(data).is_dir() else Path(loaded.config.data.out_dir) / data
        if not folder.is_dir():
            raise EvalError(
                f"--data {data!r} is neither a data set folder nor a version in {loaded.config.data.out_dir}"
            )
    if Tokenizer.load(folder).serialize() != loaded.tokenizer.serialize():
        raise EvalError(
            f"data set {folder} was made with another tokenizer than the run's: its ids would be scored as other text"
        )
    return folder


def run_perplexity(args: argparse.Namespace) -> int:
    startup.start(args)
    from mulm_jax.eval.perplexity import sliding_perplexity
    from mulm_jax.eval.scoring import WindowScorer, check_context, load_for_eval

    loaded = load_for_eval(args.checkpoint, args.overrides, args.step)
    context = args.context or loaded.config.model.max_seq_len
    check_context(loaded.config.model, context)
    tokens = eval_tokens(loaded, args.data, args.text_file)
    if args.max_tokens:
        tokens = tokens[: args.max_tokens + 1]
    start = time.perf_counter()
    result = sliding_perplexity(
        WindowScorer(loaded),
        tokens,
        context,
        args.stride,
        batch=args.batch,
        buckets=args.buckets,
        lengths=loaded.tokenizer.token_lengths(),
    )
    seconds = time.perf_counter() - start
    if not args.by_position:
        result["by_position"] = []
    if args.json:
        print(json.dumps(dict(result, seconds=round(seconds, 2))))
        return 0
    print(
        f"{args.checkpoint} (step {loaded.step}), context {result['context']}, stride {result['stride']}: "
        f"{result['tokens']:,} tokens, loss {result['loss']:.4f}, ppl {result['ppl']:.3f}, "
        + (
            "bits per byte unknown (a scored token has no fixed text, or the tokenizer gives no token's)"
            if result["bits_per_byte"] is None
            else f"{result['bits_per_byte']:.4f} bits per byte, {result['bits_per_char']:.4f} per character"
        )
        + f" ({seconds:.1f} s, {result['tokens'] / seconds:,.0f} tokens/s)"
    )
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
    result = passkey_accuracy(
        WindowScorer(loaded), loaded.tokenizer, lengths, depths, args.trials, seed=args.seed, batch=args.batch
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"passkey accuracy of {args.checkpoint} (step {loaded.step}), {args.trials} keys per cell")
    print("length  " + "".join(f"depth {d:<5g}" for d in depths) + "  mean")
    for length, row, mean in zip(lengths, result["accuracy"], result["by_length"]):
        print(f"{length:<8}" + "".join(f"{a:<11.2f}" for a in row) + f"  {mean:.2f}")
    return 0


def run_recall(args: argparse.Namespace) -> int:
    startup.start(args)
    from mulm_jax.eval.recall import recall_accuracy, recall_heatmap, recall_tables
    from mulm_jax.eval.scoring import WindowScorer, check_context, load_for_eval

    lengths = _numbers(args.lengths, int, "--lengths")
    loaded = load_for_eval(args.checkpoint, args.overrides, args.step)
    check_context(loaded.config.model, max(lengths))
    result = recall_accuracy(
        WindowScorer(loaded), loaded.tokenizer, lengths, args.trials, seed=args.seed, batch=args.batch
    )
    if args.plot:
        recall_heatmap(result, f"recall accuracy of {Path(args.checkpoint).name} (step {loaded.step})", args.plot)
    if args.json:
        print(json.dumps(dict(result, step=loaded.step)))
        return 0
    print(f"recall accuracy of {args.checkpoint} (step {loaded.step}), {args.trials} sequences per length")
    print(recall_tables(result))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def run_seq2seq(args: argparse.Namespace) -> int:
    startup.start(args)
    from mulm_jax.data import read_manifest
    from mulm_jax.eval.scoring import EvalError, load_for_eval
    from mulm_jax.eval.seq2seq import greedy_outputs, held_out_pairs, score

    loaded = load_for_eval(args.checkpoint, args.overrides, args.step)
    folder = data_folder(loaded, args.data)
    manifest = read_manifest(folder)
    if manifest.get("kind", "text") == "text":
        raise EvalError(f"data set {folder} holds text; eval seq2seq scores a data set of pairs")
    if loaded.config.model.architecture == "encoder_decoder" and loaded.decoder_start is None:
        raise EvalError(
            f"{args.checkpoint} is an encoder-decoder trained on text windows, not on pairs: it has no "
            "start token to read a source with"
        )
    examples = held_out_pairs(folder, loaded.tokenizer, args.split, args.limit)
    max_tokens = args.max_tokens or manifest["pairs"]["longest"][args.split]["trained"]
    start = time.perf_counter()
    outputs = greedy_outputs(loaded, [e.prompt_ids for e in examples], max_tokens, args.slots)
    seconds = time.perf_counter() - start
    references = [e.target for e in examples]
    result = dict(
        score(outputs, references, args.bleu_tokenize),
        step=loaded.step,
        split=args.split,
        data_set=manifest["version"],
        seconds=round(seconds, 2),
    )
    wrong = [
        {"prompt": loaded.tokenizer.decode(e.prompt_ids), "output": o, "target": e.target}
        for e, o in zip(examples, outputs)
        if o != e.target
    ]
    if args.json:
        print(json.dumps(dict(result, wrong=wrong[: args.show])))
        return 0
    print(
        f"{args.checkpoint} (step {loaded.step}) on {result['examples']:,} {args.split} pairs of {folder.name}: "
        f"exact match {result['exact_match']:.1f}%, chrF {result['chrf']:.1f}, BLEU {result['bleu']:.1f} "
        f"({seconds:.1f} s)\n  {result['chrf_signature']}\n  {result['bleu_signature']}"
    )
    for w in wrong[: args.show]:
        print(f"  {w['prompt']!r} -> {w['output']!r}, expected {w['target']!r}")
    return 0
