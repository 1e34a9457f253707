"""The serving layout with fused projections (one product for query/key/value, one for SwiGLU's gate/up) against
the same layout unfused, interleaved in one process: median wall and process-CPU milliseconds per decode step.

    .venv/bin/python -m bench.bench_fused_layout --config configs/shakespeare_char_6x384.yaml [--batch 1]

Random float32 weights; each round runs 50 decode steps of each engine, reading every step's tokens as the engine
does; the figures are medians over --rounds rounds, and the ratio is unfused / fused (above 1: fusing helps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np

from mulm_jax.config import load_config
from mulm_jax.infer import Engine
from mulm_jax.infer.cli import random_model
from mulm_jax.infer.layout import to_serving_layout


def step_ms(engine: Engine, steps: int) -> tuple[float, float]:
    """Wall and process-CPU milliseconds per decode step, every slot active, each step's tokens read."""
    active = np.ones((engine.steps.slots,), bool)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        engine._state, out = engine.steps.decode(engine.params, engine._state, active, np.bool_(False))
        np.asarray(out.tokens_B)
    return (time.perf_counter() - wall) / steps * 1e3, (time.process_time() - cpu) / steps * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=144, help="positions per slot (the model's context at most)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    loaded = random_model(load_config(args.config, []))
    max_len = min(args.max_len, loaded.config.model.max_seq_len)
    engines = {side: Engine(loaded, slots=args.batch, max_len=max_len) for side in ("fused", "unfused")}
    unfused = engines["unfused"]
    unfused.params = jax.device_put(to_serving_layout(unfused.steps.model, loaded.params, fuse=False))
    for engine in engines.values():
        engine.warmup()
        step_ms(engine, 10)
    rounds: dict[str, list[tuple[float, float]]] = {side: [] for side in engines}
    for _ in range(args.rounds):
        for side, engine in engines.items():
            rounds[side].append(step_ms(engine, 50))
    figures = {
        f"{side}_{what}_ms": round(statistics.median(r[i] for r in rounds[side]), 3)
        for side in engines
        for i, what in enumerate(("wall", "cpu"))
    }
    figures["unfused_over_fused_wall"] = round(figures["unfused_wall_ms"] / figures["fused_wall_ms"], 3)
    figures["unfused_over_fused_cpu"] = round(figures["unfused_cpu_ms"] / figures["fused_cpu_ms"], 3)
    print(f"{args.config} batch {args.batch}: " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
