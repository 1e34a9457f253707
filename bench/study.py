"""What the studies (bench/context_study.py, bench/recall_study.py) share: training a named run of a config with its
time kept, a run loaded at a context its positions may not reach, and the timings of a whole study."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional


def train_named(config: Path, out: Path, name: str, overrides: list[str], timings: dict, **kw: Any) -> Path:
    """Train (or resume: a finished run returns at once) the run `name` of `config` with `overrides` in
    out/NAME (spaces as _), its seconds in timings["train NAME"]; `kw` goes to train()."""
    from mulm_jax.config import load_config
    from mulm_jax.train.loop import train

    t = time.perf_counter()
    folder = out / name.replace(" ", "_")
    print(f"training {name} ...", flush=True)
    result = train(load_config(config, overrides), folder, quiet=True, **kw)
    timings[f"train {name}"] = round(time.perf_counter() - t, 1)
    print(
        f"  {name}: val_loss {result.last_eval.get('val_loss', float('nan')):.4f} ({timings[f'train {name}']:.0f} s)",
        flush=True,
    )
    return folder


def load_at(run: Path, length: int, overrides: list[str]) -> Optional[Any]:
    """The run loaded under `overrides` (a LoadedModel), or None where its positions cannot reach `length` (a
    learned table shorter than it)."""
    from mulm_jax.eval import EvalError, check_context, load_for_eval

    try:
        loaded = load_for_eval(run, overrides)
        check_context(loaded.config.model, length)
    except EvalError:
        return None
    return loaded


def finish_timings(timings: dict, start: float) -> dict:
    """`timings` with the study's total wall time, the CPU time of every thread of this process (steadier than
    wall time under load) and the load average."""
    timings["total"] = round(time.perf_counter() - start, 1)
    timings["cpu"] = round(time.process_time(), 1)
    timings["load_average_1min"] = os.getloadavg()[0]
    return timings


def report(out: Path, rows: list, timings: dict, args: Any, tables: str, draw: Callable[[], Path]) -> None:
    """Print a study's tables and timings, write them to OUT/results.json with its arguments, then its picture."""
    print(tables)
    print(f"timings (s): {json.dumps(timings)}")
    (out / "results.json").write_text(json.dumps({"rows": rows, "timings": timings, "args": vars(args)}, indent=1))
    print(f"wrote {out / 'results.json'} and {draw()}")
