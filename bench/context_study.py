"""Context-length study (issue 14): character models trained at context 128 on Tiny Shakespeare mixed with passkey
text, scored at 128 to 1024 tokens by sliding-window loss and passkey retrieval, zero-shot and after a short
fine-tune at 512 tokens (train.py --init-from), for RoPE (no scaling, linear, NTK, YaRN, LongRoPE), ALiBi,
learned positions and a 64-token sliding window.

    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.context_study [--out runs/context_study]

Prints a markdown table, writes results.json to --out and the plot to docs/context_study.png. Runs already in
--out are reused (a finished run resumes to its end at once), so a second call only evaluates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from bench.study import finish_timings, load_at, train_named

ROOT = Path(__file__).resolve().parent.parent
TRAIN_LENGTH = 128
LENGTHS = (128, 256, 512, 1024)
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "longrope")


def rope_scaling(kind: str, length: int, head_dim: int) -> Optional[dict[str, Any]]:
    """The rope_scaling that stretches the trained context to `length` (None: plain RoPE, or no stretch needed).

    LongRoPE's factors are not searched here (the paper's evolutionary search): they rise geometrically from 1 for
    the fastest rotation to the whole stretch for the slowest, a fixed guess."""
    factor = length / TRAIN_LENGTH
    if kind == "none" or factor <= 1:
        return None
    if kind == "longrope":
        half = head_dim // 2
        return {
            "type": "longrope",
            "original_max_seq_len": TRAIN_LENGTH,
            "long_factor": [round(factor ** (i / (half - 1)), 4) for i in range(half)],
        }
    return {"type": kind, "factor": factor, "original_max_seq_len": TRAIN_LENGTH}


def overrides_for(length: int, scaling: Optional[dict[str, Any]]) -> list[str]:
    return [f"model.max_seq_len={length}", f"model.rope_scaling={json.dumps(scaling)}"]


def base_runs(args: argparse.Namespace, dataset: Path, vocab: int) -> dict[str, list[str]]:
    """name -> overrides of configs/shakespeare_char.yaml for the four models trained at context 128."""
    common = [
        f"data.dataset={dataset}",
        f"model.vocab_size={vocab}",
        f"model.max_seq_len={TRAIN_LENGTH}",
        f"train.seq_len={TRAIN_LENGTH}",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.eval_batches=10",
        "train.log_every=50",
    ]
    return {
        "rope": common + ["model.positional=rope"],
        "alibi": common + ["model.positional=alibi"],
        "learned": common + ["model.positional=learned"],
        "sliding window 64": common
        + ["model.positional=rope", "model.attention=sliding_window", "model.sliding_window=64"],
    }


def finetune_overrides(args: argparse.Namespace, base: list[str], extra: list[str]) -> list[str]:
    steps = args.finetune_steps
    return (
        base
        + extra
        + [
            f"train.seq_len={args.finetune_length}",
            f"train.batch_size={args.finetune_batch}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            f"train.warmup_steps={max(steps // 10, 1)}",
            "train.lr=5e-4",
            "train.min_lr=5e-5",
        ]
    )


def evaluate(
    run: Path, overrides_at: Callable[[int], list[str]], lengths: tuple[int, ...], tokens: Any, args: argparse.Namespace
) -> dict[int, Optional[dict[str, float]]]:
    """length -> {"loss", "passkey"} of the run under `overrides_at(length)` (None where its positions cannot
    reach)."""
    from mulm_jax.eval import WindowScorer, passkey_accuracy, sliding_perplexity

    out: dict[int, Optional[dict[str, float]]] = {}
    for length in lengths:
        extra = overrides_at(length)
        loaded = load_at(run, length, extra)
        if loaded is None:
            out[length] = None
            continue
        scorer = WindowScorer(loaded)
        loss = sliding_perplexity(scorer, tokens, length)["loss"]
        passkey = passkey_accuracy(scorer, loaded.tokenizer, [length], args.depths, args.trials)["by_length"][0]
        out[length] = {"loss": loss, "passkey": passkey}
        print(f"    {run.name} {' '.join(extra)} @ {length}: loss {loss:.4f}, passkey {passkey:.2f}", flush=True)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | positions at 512+ | "
        + " | ".join(f"loss {n}" for n in LENGTHS)
        + " | "
        + " | ".join(f"passkey {n}" for n in LENGTHS)
        + " |"
    )
    lines = [head, "|" + "---|" * (2 + 2 * len(LENGTHS))]
    for row in rows:
        cells = [row["model"], row["method"]]
        cells += [f"{row['results'][n]['loss']:.3f}" if row["results"].get(n) else "-" for n in LENGTHS]
        cells += [f"{row['results'][n]['passkey']:.2f}" if row["results"].get(n) else "-" for n in LENGTHS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=90)
    colors: dict[str, Any] = {}
    for row in rows:  # one colour per method: its fine-tune (dashed) in the colour of its zero-shot line
        method = row["method"].split(",")[0] if row["model"] == "RoPE" else row["model"]
        color = colors.setdefault(method, plt.get_cmap("tab10")(len(colors) % 10))
        points = [(int(n), row["results"][n]["loss"]) for n in row["results"] if row["results"][n]]
        style = "--" if row["finetuned"] else "-"
        ax.plot(
            *zip(*sorted(points)),
            style,
            color=color,
            marker="o",
            markersize=3,
            label=f"{row['model']}: {row['method']}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
    ax.set_xlabel("context length (characters); trained at 128, fine-tunes (dashed) at 512")
    ax.set_ylabel("validation loss (nats / character)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/context_study", help="folder of the study's runs and results.json")
    parser.add_argument("--steps", type=int, default=800, help="training steps of each model at context 128")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-length", type=int, default=512)
    parser.add_argument("--finetune-batch", type=int, default=4)
    parser.add_argument("--eval-tokens", type=int, default=8192, help="validation characters scored per length")
    parser.add_argument("--trials", type=int, default=4, help="passkey keys per depth and length")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--share", type=float, default=0.5, help="passkey text's share of the training characters")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "context_study.png"))
    args = parser.parse_args(argv)
    args.depths = [float(d) for d in args.depths.split(",")]

    from mulm_jax.config import DataConfig, load_config
    from mulm_jax.data import assemble, load_tokens

    start = time.perf_counter()
    out = Path(args.out)
    data = assemble(
        DataConfig(
            sources=("tinyshakespeare", f"passkey:{args.share}"), tokenizer="char", out_dir=str(out / "datasets")
        )
    )
    tokens = load_tokens(data.path, "val")[: args.eval_tokens + 1]  # Tiny Shakespeare's val text comes first
    if data.manifest["tokenizer"]["eos_id"] in set(tokens.tolist()):
        raise SystemExit(f"--eval-tokens {args.eval_tokens} reaches past Tiny Shakespeare's validation text")
    config = ROOT / "configs" / "shakespeare_char.yaml"
    timings: dict[str, float] = {}

    def run(name: str, overrides: list[str], **kw: Any) -> Path:
        return train_named(config, out, name, overrides, timings, **kw)

    bases = base_runs(args, data.path, data.manifest["vocab_size"])
    runs = {name: run(name, overrides) for name, overrides in bases.items()}
    head_dim = load_config(config, bases["rope"]).model.head_dim
    length = args.finetune_length
    tuned = {
        kind: run(
            f"rope {kind} ft{length}",
            finetune_overrides(args, bases["rope"], overrides_for(length, rope_scaling(kind, length, head_dim))),
            init_from=str(runs["rope"]),
        )
        for kind in ROPE_SCALINGS
    }
    tuned["learned"] = run(
        f"learned ft{length}",
        finetune_overrides(args, bases["learned"], [f"model.max_seq_len={length}"]),
        init_from=str(runs["learned"]),
        extend_positions=True,
    )

    t = time.perf_counter()
    rows = []

    def row(
        model: str,
        method: str,
        run_dir: Path,
        finetuned: bool = False,
        overrides_at: Callable[[int], list[str]] = lambda length: [],
        lengths: tuple[int, ...] = LENGTHS,
    ) -> dict[str, Any]:
        print(f"evaluating {model}: {method}", flush=True)
        result = {
            "model": model,
            "method": method,
            "finetuned": finetuned,
            "results": evaluate(run_dir, overrides_at, lengths, tokens, args),
        }
        rows.append(result)
        return result

    plain = row("RoPE", "no scaling", runs["rope"])
    for kind in ROPE_SCALINGS[1:]:  # at 128 every scaling is the identity: plain RoPE's figures
        scaled = row(
            "RoPE",
            kind,
            runs["rope"],
            lengths=LENGTHS[1:],
            overrides_at=lambda n, kind=kind: overrides_for(n, rope_scaling(kind, n, head_dim)),
        )
        scaled["results"][LENGTHS[0]] = plain["results"][LENGTHS[0]]
    row("ALiBi", "as trained", runs["alibi"])
    row("learned", "as trained", runs["learned"])
    row("sliding window 64", "RoPE, as trained", runs["sliding window 64"])
    for kind in ROPE_SCALINGS:
        row("RoPE", f"{'no scaling' if kind == 'none' else kind}, fine-tuned at {length}", tuned[kind], True)
    row("learned", f"extended to {length}, fine-tuned", tuned["learned"], True)
    timings["evaluate"] = round(time.perf_counter() - t, 1)
    finish_timings(timings, start)

    print(table(rows))
    print(f"timings (s): {json.dumps(timings)}")
    (out / "results.json").write_text(json.dumps({"rows": rows, "timings": timings, "args": vars(args)}, indent=1))
    plot(rows, Path(args.plot))
    print(f"wrote {out / 'results.json'} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
