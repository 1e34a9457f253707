"""Runs compared side by side: their metrics.jsonl curves by step and by wall time (loss, and validation bits per
byte, which compares runs of different tokenizers), and a table of parameters, training speed and best validation
loss and bits per byte (`python -m mulm_jax plot RUN ...`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mulm_jax.config import Config
from mulm_jax.errors import MulmError
from mulm_jax.inspect.draw import plt, save_figure
from mulm_jax.models.info import describe
from mulm_jax.runs import is_run, metrics_path, read_config, read_metrics


@dataclass(frozen=True)
class RunCurves:
    name: str
    config: Config
    train: list[dict]  # rows with "loss"
    evals: list[dict]  # rows with "val_loss" (and "val_bpb" where the tokenizer gives the text's bytes)


def read_run(run_dir: Path) -> RunCurves:
    """A run folder's config and metrics rows; a clear error when it is not a run folder or has no metrics."""
    if not is_run(run_dir) or not metrics_path(run_dir).is_file():
        raise MulmError(
            f"{str(run_dir)!r} is not a run folder with metrics: expected config.yaml and "
            "metrics.jsonl in it (the --workdir of train.py)"
        )
    config = read_config(run_dir)
    rows = read_metrics(run_dir)
    return RunCurves(run_dir.name, config, [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r])


def runs_table(runs: list[RunCurves]) -> list[dict]:
    """Per run: parameters, steps trained, median tokens/s, the best validation loss with its step and the best
    validation bits per byte (None without them)."""
    table = []
    for run in runs:
        best: Optional[dict] = min(run.evals, key=lambda r: r["val_loss"], default=None)
        bpb = [r["val_bpb"] for r in run.evals if "val_bpb" in r]
        speeds = [r["tokens_per_sec"] for r in run.train if "tokens_per_sec" in r]
        table.append(
            {
                "run": run.name,
                "params": describe(run.config.model)["parameters"],
                "steps": max((r["step"] for r in run.train + run.evals), default=0),
                "tokens_per_sec": statistics.median(speeds) if speeds else None,
                "best_val_loss": None if best is None else best["val_loss"],
                "best_val_step": None if best is None else best["step"],
                "best_val_bpb": min(bpb, default=None),
            }
        )
    return table


def plot_runs(runs: list[RunCurves], table: list[dict], path: str | Path) -> Path:
    """Training (thin) and validation (thick, dots) loss of every run against step and against wall time, on
    shared axes; below them, where any run has them, the validation bits per byte the same way; then the table."""
    with_bpb = any("val_bpb" in r for run in runs for r in run.evals)
    panels = [("loss (nats per token)", (("loss", dict(lw=1, alpha=0.6)), ("val_loss", dict(lw=2, marker="o", ms=3))))]
    if with_bpb:
        panels.append(("val bits per byte", (("val_bpb", dict(lw=2, marker="o", ms=3)),)))
    fig = plt.figure(figsize=(13, 1.0 + 5.0 * len(panels) + 0.3 * len(runs)))
    grid = fig.add_gridspec(
        len(panels) + 1, 2, height_ratios=[5.0] * len(panels) + [0.6 + 0.3 * len(runs)], hspace=0.35
    )
    for p, (ylabel, curves) in enumerate(panels):
        by_step = fig.add_subplot(grid[p, 0])
        by_time = fig.add_subplot(grid[p, 1], sharey=by_step)
        for i, run in enumerate(runs):
            start = min((r["time"] for r in run.train + run.evals if "time" in r), default=0.0)
            for key, style in curves:
                rows = [r for r in (run.train if key == "loss" else run.evals) if key in r]
                if not rows:
                    continue
                label = f"{run.name} {'train' if key == 'loss' else 'val'}"
                by_step.plot(
                    [r["step"] for r in rows], [r[key] for r in rows], color=f"C{i % 10}", label=label, **style
                )
                if all("time" in r for r in rows):
                    by_time.plot(
                        [(r["time"] - start) / 60 for r in rows], [r[key] for r in rows], color=f"C{i % 10}", **style
                    )
        by_step.set_xlabel("step")
        by_time.set_xlabel("wall time (minutes since the run's first row; resumed runs include the pause)")
        by_step.set_ylabel(ylabel)
        for ax in (by_step, by_time):
            ax.grid(alpha=0.3)
        by_step.legend(fontsize=8)
    cells = [
        [
            row["run"],
            f"{row['params']:,}",
            str(row["steps"]),
            "-" if row["tokens_per_sec"] is None else f"{row['tokens_per_sec']:,.0f}",
            "-" if row["best_val_loss"] is None else f"{row['best_val_loss']:.4f} (step {row['best_val_step']})",
            "-" if row["best_val_bpb"] is None else f"{row['best_val_bpb']:.4f}",
        ]
        for row in table
    ]
    below = fig.add_subplot(grid[len(panels), :])
    below.axis("off")
    below.table(
        cellText=cells,
        colLabels=["run", "parameters", "steps", "tokens/s (median)", "best val loss", "best val bits per byte"],
        loc="center",
        cellLoc="center",
    )
    fig.suptitle(
        "training and validation loss"
        + (", and validation bits per byte (comparable across tokenizers)" if with_bpb else "")
    )
    return save_figure(fig, path)
