"""Start-up cost of scanned layers: model init + train-step compile time, per-layer (unrolled) and model.scan_layers.

    .venv/bin/python -m bench.bench_compile [--config configs/mulm_1gb.yaml] [--rounds 1]

Each layout is measured in a process of its own (no compilation cache, the trainer's process settings), the two
taking turns round by round; the figures are medians over rounds. Per layout: compiling and running the jitted
init of the state (parameters and optimizer state at step 0, on train.mesh), then compiling the train step for
the config's batch (train.py compiles it beside the init; here they are timed one after the other). Prints each
phase, the totals, and the ratio unrolled / scanned; --json adds one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"per-layer": False, "scanned": True}


def measure(config_path: str, scan_layers: bool) -> dict[str, float]:
    """Seconds to compile the state's init, to run it, and to compile the train step, in this process."""
    from mulm_jax.platform import configure_process

    configure_process()
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from mulm_jax.config import load_config
    from mulm_jax.train.loop import run_steps
    from mulm_jax.train.mesh import BATCH

    cfg = load_config(config_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=scan_layers))
    T = cfg.train.seq_len or cfg.model.max_seq_len
    steps = run_steps(cfg, None, T)
    start = time.perf_counter()
    init = steps.fresh_state.lower().compile()
    init_compile = time.perf_counter() - start
    start = time.perf_counter()
    state = jax.block_until_ready(init())
    init_run = time.perf_counter() - start
    del state
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, T), jnp.int32, sharding=NamedSharding(steps.mesh, BATCH))
    start = time.perf_counter()
    steps.train_step.lower(steps.state_shapes, {"inputs": batch, "targets": batch}).compile()
    step_compile = time.perf_counter() - start
    return {
        "init_compile_s": init_compile,
        "init_run_s": init_run,
        "step_compile_s": step_compile,
        "total_s": init_compile + init_run + step_compile,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "mulm_1gb.yaml"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    parser.add_argument("--child", choices=list(LAYOUTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, LAYOUTS[args.child])))
        return 0

    env = {**os.environ, "MULM_COMPILATION_CACHE": "off"}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
    for _ in range(args.rounds):
        for name in LAYOUTS:
            out = subprocess.run(
                [sys.executable, "-m", "bench.bench_compile", "--config", args.config, "--child", name],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(out.stdout.splitlines()[-1]))
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in results.items()
    }
    print(f"{args.config}: model init + train-step compile, {args.rounds} round(s), medians (s)")
    print(f"  {'':10s} {'init compile':>12s} {'init run':>9s} {'step compile':>13s} {'total':>8s}")
    for name, m in medians.items():
        print(
            f"  {name:10s} {m['init_compile_s']:12.1f} {m['init_run_s']:9.1f} {m['step_compile_s']:13.1f} "
            f"{m['total_s']:8.1f}"
        )
    ratio = medians["per-layer"]["total_s"] / medians["scanned"]["total_s"]
    print(f"per-layer / scanned: {ratio:.2f}x (target 2x: {'ok' if ratio >= 2 else 'BELOW TARGET'})")
    if args.json:
        print(json.dumps({"config": args.config, "rounds": args.rounds, **medians, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
