"""Associative-recall study (issue 30): 2-layer character models trained the same way on the generated `recall`
source (configs/recall.yaml: key-value pairs, then every key asked for again, context 64) with RoPE, ALiBi, learned
and no positions, then scored at the trained length and at 2x and 4x: recall accuracy by length, by the query's
distance to its pair and by the pair's depth, and the step at which each model's induction head formed (the first
evaluation whose best head's induction score, val_induction, reaches --formed).

    .venv/bin/python -m bench.recall_study [--out runs/recall_study] [--steps N] [--set train.schedule=cosine ...]

Prints markdown tables, writes results.json to --out and the heatmap to docs/recall_study.png. Runs already in --out
are reused (a finished run resumes to its end at once), so a second call only evaluates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from bench.study import finish_timings, load_at, report, train_named

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "recall.yaml"
SCHEMES = {"RoPE": "rope", "ALiBi": "alibi", "learned": "learned", "NoPE": "none"}


def formed_at(run: Path, threshold: float) -> tuple[Optional[int], list[tuple[int, float, str]]]:
    """The first evaluated step whose val_induction reaches `threshold` (None: none did), and every evaluation's
    (step, val_induction, head)."""
    from mulm_jax.runs import read_metrics

    curve = [
        (r["step"], r["val_induction"], r["val_induction_head"]) for r in read_metrics(run) if "val_induction" in r
    ]
    return next((step for step, score, _ in curve if score >= threshold), None), curve


def evaluate(run: Path, lengths: list[int], trials: int) -> Optional[dict[str, Any]]:
    """recall_accuracy of the run at the lengths its positions reach (a learned table: its own), None if none."""
    from mulm_jax.eval import WindowScorer, recall_accuracy

    reached = [n for n in lengths if load_at(run, n, []) is not None]
    loaded = load_at(run, max(reached), []) if reached else None
    if loaded is None:
        return None
    return recall_accuracy(WindowScorer(loaded), loaded.tokenizer, reached, trials)


def cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def tables(rows: list[dict[str, Any]], lengths: list[int], threshold: float) -> str:
    """Markdown: accuracy by length with the induction step per scheme; then by distance and by depth at the
    trained length."""
    from mulm_jax.eval.recall import bucket_labels

    def at(row: dict[str, Any], length: int) -> Optional[int]:
        return row["result"]["lengths"].index(length) if length in row["result"]["lengths"] else None

    head = ["model"] + [f"recall {n}" for n in lengths] + [f"induction >= {threshold:g} at step", "best head (score)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        accuracy = [None if at(row, n) is None else row["result"]["by_length"][at(row, n)] for n in lengths]
        best = max(row["induction"], key=lambda r: r[1])
        lines.append(
            "| "
            + " | ".join([row["model"], *map(cell, accuracy), str(row["formed"] or "-"), f"{best[2]} ({best[1]:.2f})"])
            + " |"
        )
    for key, edges, title in (
        ("by_distance", "distance_edges", "distance (tokens)"),
        ("by_depth", "depth_edges", "depth (pair position / length)"),
    ):
        labels = bucket_labels(rows[0]["result"][edges])
        values = {row["model"]: row["result"][key][0] for row in rows}  # the trained length's row
        shown = [b for b in range(len(labels)) if any(v[b] is not None for v in values.values())]
        lines += ["", f"at the trained length {lengths[0]}, by {title}:", ""]
        lines += ["| model | " + " | ".join(labels[b] for b in shown) + " |", "|" + "---|" * (len(shown) + 1)]
        lines += [f"| {m} | " + " | ".join(cell(v[b]) for b in shown) + " |" for m, v in values.items()]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], lengths: list[int], path: Path) -> Path:
    """One heatmap per scheme: accuracy by length (rows) and the pair's depth in the context (columns); the
    distances are those of one document's pairs and queries at every length (eval.recall), so depth is where the
    positional schemes part."""
    from mulm_jax.eval.recall import accuracy_heatmaps, bucket_labels

    labels = bucket_labels(rows[0]["result"]["depth_edges"])
    panels = []
    for row in rows:
        by_length = dict(zip(row["result"]["lengths"], row["result"]["by_depth"]))
        grid = [[by_length[n][b] if n in by_length else None for b in range(len(labels))] for n in lengths]
        panels.append((row["model"], grid, [str(n) for n in lengths], labels))
    return accuracy_heatmaps(
        panels,
        "context length (trained at the first)",
        "depth of the pair (its position / the length)",
        "recall accuracy by context length and the pair's depth in it",
        path,
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/recall_study", help="folder of the study's runs and results.json")
    parser.add_argument("--steps", type=int, help="training steps of each model (default: the config's)")
    parser.add_argument("--lengths", default="64,128,256", help="the trained length, then longer ones")
    parser.add_argument("--trials", type=int, default=40, help="recall sequences per length")
    parser.add_argument("--formed", type=float, default=0.3, help="induction score at which the head counts formed")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "recall_study.png"))
    parser.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every model"
    )
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]

    from mulm_jax.config import DataConfig
    from mulm_jax.data import assemble

    start = time.perf_counter()
    out = Path(args.out)
    data = assemble(DataConfig(sources=("recall",), tokenizer="char", out_dir=str(out / "datasets")))
    common = [f"data.dataset={data.path}", f"model.max_seq_len={lengths[0]}", f"train.seq_len={lengths[0]}"]
    if args.steps:
        common += [f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}"]
    common += args.overrides
    timings: dict[str, float] = {}
    runs = {
        model: train_named(CONFIG, out, model, common + [f"model.positional={positional}"], timings)
        for model, positional in SCHEMES.items()
    }
    t = time.perf_counter()
    rows = []
    for model, run in runs.items():
        formed, curve = formed_at(run, args.formed)
        result = evaluate(run, lengths, args.trials)
        rows.append({"model": model, "result": result, "formed": formed, "induction": curve})
        print(f"  {model}: recall {[round(a, 2) for a in result['by_length']]}, induction formed at {formed}")
    timings["evaluate"] = round(time.perf_counter() - t, 1)
    finish_timings(timings, start)

    report(out, rows, timings, args, tables(rows, lengths, args.formed), lambda: plot(rows, lengths, Path(args.plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
