"""One-switch ablations (issue 30): the demo model, configs/shakespeare_char.yaml, trained as it is and with each
switch of configs/studies/ablation_*.yaml flipped (no residual, unscaled attention, no MLP, no positions, post-norm,
untied head), for the same steps on the same Tiny Shakespeare batches, to show what each switch costs.

    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.ablation_study [--steps 500] [--out runs/ablation_study]

Prints a markdown table (parameters, final train loss, best validation loss and bits per byte, training tokens/s,
each against the baseline), writes results.json to --out and the loss curves to docs/ablations.png. Runs already in
--out are reused (a finished run resumes to its end at once), so a second call only times and redraws.

Tokens/s is not the runs' own (their steps ran minutes apart, under whatever else the machine ran then): each
model's train step is timed afresh with bench.harness, the models in turn, round after round, and the median taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from bench.harness import call_times
from bench.study import finish_timings, report, train_named

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "shakespeare_char.yaml"
STUDIES = ROOT / "configs" / "studies"
PREFIX = "ablation_"
FINAL_ROWS = 5  # the final train loss: the mean of the last logged rows (one batch each is noisy)


def overrides(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """A config fragment ({"model": {"residual": False}}) as --set overrides (["model.residual=false"])."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")  # false, 1e-3
    return out


def switches() -> dict[str, list[str]]:
    """Run name -> its overrides of the demo config: the baseline (none), then each study file's, by file name."""
    out: dict[str, list[str]] = {"baseline": []}
    for path in sorted(STUDIES.glob(f"{PREFIX}*.yaml")):
        out[path.stem.removeprefix(PREFIX)] = overrides(yaml.safe_load(path.read_text()))
    return out


def common_overrides(args: argparse.Namespace, dataset: Path) -> list[str]:
    return [
        f"data.dataset={dataset}",
        f"train.steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        f"train.checkpoint_every={args.steps}",
        "train.log_every=10",
    ]


def step_timer(cfg: Any) -> Callable[[], Any]:
    """One call: one train step of `cfg`'s model (the run's own jitted step, AdamW and all) on a fixed batch."""
    import numpy as np

    from mulm_jax.train.loop import run_steps
    from mulm_jax.train.mesh import global_batch

    B, T = cfg.train.batch_size, cfg.train.seq_len or cfg.model.max_seq_len
    steps = run_steps(cfg, None, T)
    ids = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, B, T), dtype=np.int32)
    batch = global_batch({"inputs": ids[0], "targets": ids[1]}, steps.mesh)
    state = [steps.fresh_state()]  # the step donates its state: each call takes the last one's

    def step() -> Any:
        state[0], metrics = steps.train_step(state[0], batch)
        return metrics

    return step


def tokens_per_sec(configs: dict[str, Any], rounds: int, calls: int) -> dict[str, float]:
    """Name -> training tokens/s of its step: the median of `rounds` x `calls` timed calls, the models in turn."""
    timers = {name: step_timer(cfg) for name, cfg in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, step in timers.items():
            times[name] += call_times(step, calls)
    return {
        name: cfg.train.batch_size * (cfg.train.seq_len or cfg.model.max_seq_len) / statistics.median(times[name])
        for name, cfg in configs.items()
    }


def row_for(name: str, switch: list[str], run: Any, table_row: dict[str, Any], speed: float) -> dict[str, Any]:
    losses = [r["loss"] for r in run.train]
    return {
        "run": name,
        "switch": ", ".join(f"`{s}`" for s in switch) or "(the demo model)",
        "params": table_row["params"],
        "final_train_loss": statistics.fmean(losses[-FINAL_ROWS:]),
        "best_val_loss": table_row["best_val_loss"],
        "best_val_bpb": table_row["best_val_bpb"],
        "tokens_per_sec": speed,
        "tokens_per_sec_in_the_run": table_row["tokens_per_sec"],  # the run's logged median, under its load
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = [
        "| run | switch | parameters | final train loss | best val loss | vs baseline | val bits per byte "
        "| tokens/s | vs baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        bpb = "-" if row["best_val_bpb"] is None else f"{row['best_val_bpb']:.3f}"
        lines.append(
            f"| {row['run']} | {row['switch']} | {row['params']:,} | {row['final_train_loss']:.3f} "
            f"| {row['best_val_loss']:.3f} | {row['best_val_loss'] - base['best_val_loss']:+.3f} | {bpb} "
            f"| {row['tokens_per_sec']:,.0f} | {row['tokens_per_sec'] / base['tokens_per_sec']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], runs: list[Any], path: Path) -> Path:
    """Left: each run's training loss (thin) and validation loss (dots) by step. Right: each switch's best validation
    loss against the baseline's, its step's speed written beside it."""
    from mulm_jax.inspect.draw import plt, save_figure

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.4, 1]})
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        curves.plot([r["step"] for r in run.train], [r["loss"] for r in run.train], color=color, lw=0.8, alpha=0.5)
        evals = [(r["step"], r["val_loss"]) for r in run.evals]
        curves.plot(*zip(*evals), color=color, lw=2, marker="o", ms=4, label=run.name)
    curves.set_xlabel("step (12 x 64 characters each)")
    curves.set_ylabel("loss (nats per character): train thin, validation dots")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=9)
    base = rows[0]
    deltas = [row["best_val_loss"] - base["best_val_loss"] for row in rows[1:]]
    y = range(len(deltas))
    bars.barh(y, deltas, color=[f"C{i % 10}" for i in range(1, len(rows))])
    bars.set_yticks(y, [row["run"] for row in rows[1:]])
    bars.invert_yaxis()
    bars.axvline(0, color="black", lw=0.8)
    for i, (row, delta) in enumerate(zip(rows[1:], deltas)):
        speed = row["tokens_per_sec"] / base["tokens_per_sec"]
        bars.annotate(f" {delta:+.3f}, {speed:.2f}x speed", (max(delta, 0.0), i), va="center", fontsize=9)
    bars.set_xlim(min(deltas + [0]) - 0.05, max(deltas + [0]) + 0.5)
    bars.set_xlabel(f"best validation loss minus the baseline's ({base['best_val_loss']:.3f})")
    bars.grid(axis="x", alpha=0.3)
    fig.suptitle(f"the demo model with one switch flipped, {runs[0].evals[-1]['step']} steps each on Tiny Shakespeare")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation_study", help="folder of the study's runs and results.json")
    parser.add_argument("--steps", type=int, default=500, help="training steps of every run (the demo trains 2000)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation losses")
    parser.add_argument("--only", nargs="*", help="train only these runs (names as in the table; baseline first)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of step timings, every model once a round")
    parser.add_argument("--calls", type=int, default=5, help="timed steps of each model per round")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "ablations.png"))
    args = parser.parse_args(argv)

    from mulm_jax.config import load_config
    from mulm_jax.data import assemble
    from mulm_jax.inspect.runs import read_run, runs_table

    start = time.perf_counter()
    out = Path(args.out)
    data = load_config(BASE).data
    dataset = assemble(dataclasses.replace(data, out_dir=str(out / "datasets"))).path
    runs = switches()
    if args.only:
        unknown = set(args.only) - set(runs)
        if unknown:
            raise SystemExit(f"--only {' '.join(sorted(unknown))}: expected names among {', '.join(runs)}")
        runs = {name: runs[name] for name in ["baseline", *args.only] if name in runs}
    timings: dict[str, float] = {}
    overrides = {name: switch + common_overrides(args, dataset) for name, switch in runs.items()}
    curves = [read_run(train_named(BASE, out, name, overrides[name], timings)) for name in runs]
    configs = {name: load_config(BASE, overrides[name]) for name in runs}
    t = time.perf_counter()
    speeds = tokens_per_sec(configs, args.rounds, args.calls)
    timings["time steps"] = round(time.perf_counter() - t, 1)
    table = runs_table(curves)
    rows = [
        row_for(name, switch, run, row, speeds[name]) for (name, switch), run, row in zip(runs.items(), curves, table)
    ]
    finish_timings(timings, start)

    report(out, rows, timings, args, markdown(rows), lambda: plot(rows, curves, Path(args.plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
