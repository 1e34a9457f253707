"""Runs compared side by side: their metrics.jsonl curves by step, by tokens seen and by wall time (loss, and
validation bits per byte, which compares runs of different tokenizers), a table of architecture, parameters,
data, training speed and best validation loss and bits per byte, and their configs' differences
(`python -m mulm_jax plot RUN ...`, the lab's Compare view)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

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

    @property
    def tokens_per_step(self) -> int:
        """Token positions one training step reads: the global batch's rows times their length."""
        return self.config.train.batch_size * (self.config.train.seq_len or self.config.model.max_seq_len)

    @property
    def start_time(self) -> float:
        """The time of the run's first metrics row (wall-time curves count from it)."""
        return min((r["time"] for r in self.train + self.evals if "time" in r), default=0.0)


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


def data_description(config: Config) -> str:
    """The run's data in a few words: its data set version's folder name, or its sources and tokenizer."""
    if config.data.dataset:
        return Path(config.data.dataset).name
    sources = ", ".join(Path(source).name for source in config.data.sources)
    return f"{sources or '(no sources)'} ({Path(config.data.tokenizer).name})"


def runs_table(runs: list[RunCurves]) -> list[dict]:
    """Per run: architecture, positions, parameters, data, steps trained and tokens seen, median tokens/s, the
    best validation loss with its step and the best validation bits per byte (None without them)."""
    table = []
    for run in runs:
        best: Optional[dict] = min(run.evals, key=lambda r: r["val_loss"], default=None)
        bpb = [r["val_bpb"] for r in run.evals if "val_bpb" in r]
        speeds = [r["tokens_per_sec"] for r in run.train if "tokens_per_sec" in r]
        steps = max((r["step"] for r in run.train + run.evals), default=0)
        model = run.config.model
        table.append(
            {
                "run": run.name,
                "architecture": f"{model.architecture} {model.num_layers}x{model.d_model}",
                "positional": model.positional,
                "params": describe(model)["parameters"],
                "data": data_description(run.config),
                "steps": steps,
                "tokens_seen": steps * run.tokens_per_step,
                "tokens_per_sec": statistics.median(speeds) if speeds else None,
                "best_val_loss": None if best is None else best["val_loss"],
                "best_val_step": None if best is None else best["step"],
                "best_val_bpb": min(bpb, default=None),
            }
        )
    return table


def config_diff(configs: list[Config]) -> list[dict]:
    """The settings whose values differ between the configs, as [{"key": "model.positional", "values": [one per
    config]}] in the configs' own order of sections and fields."""
    flat = [_flatten(dataclasses.asdict(config)) for config in configs]
    keys = list(dict.fromkeys(key for values in flat for key in values))
    return [
        {"key": key, "values": [values.get(key) for values in flat]}
        for key in keys
        if any(values.get(key) != flat[0].get(key) for values in flat[1:])
    ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def curves(run: RunCurves, max_points: int = 1000) -> dict:
    """The run's curves for drawing: training rows (at most `max_points`, evenly thinned) and every evaluation
    row, each with its step, tokens seen, seconds since the run's first row, and its values."""
    step = max(1, -(-len(run.train) // max_points))

    def point(row: dict) -> dict:
        return {
            **{k: v for k, v in row.items() if k != "time"},
            "tokens": row["step"] * run.tokens_per_step,
            "seconds": row["time"] - run.start_time if "time" in row else None,
        }

    return {"run": run.name, "train": [point(r) for r in run.train[::step]], "evals": [point(r) for r in run.evals]}


X_AXES = (("step", "step"), ("tokens", "tokens seen"), ("minutes", "wall time (minutes since the run's first row)"))


def plot_runs(runs: list[RunCurves], table: list[dict], path: str | Path) -> Path:
    """Training (thin) and validation (thick, dots) loss of every run against step, tokens seen and wall time, on
    shared axes; below them, where any run has them, the validation bits per byte and the best head's induction
    score (the step its induction head forms) the same way; then the table."""
    with_bpb = any("val_bpb" in r for run in runs for r in run.evals)
    panels = [("loss (nats per token)", (("loss", dict(lw=1, alpha=0.6)), ("val_loss", dict(lw=2, marker="o", ms=3))))]
    if with_bpb:
        panels.append(("val bits per byte", (("val_bpb", dict(lw=2, marker="o", ms=3)),)))
    if any("val_induction" in r for run in runs for r in run.evals):
        panels.append(("induction score of the best head", (("val_induction", dict(lw=2, marker="o", ms=3)),)))
    fig = plt.figure(figsize=(18, 1.0 + 5.0 * len(panels) + 0.3 * len(runs)))
    grid = fig.add_gridspec(
        len(panels) + 1, len(X_AXES), height_ratios=[5.0] * len(panels) + [0.6 + 0.3 * len(runs)], hspace=0.35
    )
    for p, (ylabel, styles) in enumerate(panels):
        axes = [fig.add_subplot(grid[p, 0])]
        axes += [fig.add_subplot(grid[p, c], sharey=axes[0]) for c in range(1, len(X_AXES))]
        for i, run in enumerate(runs):
            drawn = curves(run, max_points=len(run.train) or 1)
            for key, style in styles:
                rows = [r for r in drawn["train" if key == "loss" else "evals"] if key in r]
                label = f"{run.name} {'train' if key == 'loss' else 'val'}"
                for ax, (x, _) in zip(axes, X_AXES):
                    if not rows or (x == "minutes" and any(r["seconds"] is None for r in rows)):
                        continue
                    xs = [r["seconds"] / 60 if x == "minutes" else r[x] for r in rows]
                    ax.plot(xs, [r[key] for r in rows], color=f"C{i % 10}", label=label, **style)
        for ax, (_, xlabel) in zip(axes, X_AXES):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[0].legend(fontsize=8)
    cells = [
        [
            row["run"],
            row["architecture"],
            f"{row['params']:,}",
            row["data"],
            f"{row['steps']} ({row['tokens_seen']:,} tokens)",
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
        colLabels=[
            "run",
            "architecture",
            "parameters",
            "data",
            "steps (tokens seen)",
            "tokens/s (median)",
            "best val loss",
            "best val bits per byte",
        ],
        loc="center",
        cellLoc="center",
    )
    fig.suptitle(
        "training and validation loss"
        + (", and validation bits per byte (comparable across tokenizers)" if with_bpb else "")
    )
    return save_figure(fig, path)
