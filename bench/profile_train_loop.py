"""Where a training step's milliseconds go in train.py's loop: the step alone, then with each part the loop adds.

    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.profile_train_loop [--rounds 5] [--steps 50]

Builds the trainer's own pieces for the config (run_steps: model, optimizer, mesh and step; make_loader, the
process settings train.py makes) and times loops of --steps steps, each variant once per round in turn, medians
over rounds:

  step, batch on the device   the step fed one global batch already on the devices: the floor for the loop
  + batch from the host       a different numpy batch each step, made a global array (global_batch)
  + loader (1 thread)         next(loader) each step, as train.py reads it (grain, one prefetch thread)
  + loader (in this thread)   the same batches made in the main thread, between the step calls
  + metrics at log steps      + the loop's fetch of the pending metrics every log_every steps and its row
  + metrics every step        what log_every=1 costs: a device_get after each step

Also the time of the step call itself (dispatch: the step runs asynchronously) and of one next(loader).
train.py as a whole is timed by bench/bench_train_e2e.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="steps per variant per round")
    args = parser.parse_args()

    from mulm_jax.config import load_config
    from mulm_jax.startup import start_training

    start_training(load_config(args.config).train)
    import jax
    import numpy as np

    from mulm_jax.config import load_config
    from mulm_jax.data import Tokenizer, make_loader, prepare_dataset
    from mulm_jax.train.loop import run_steps
    from mulm_jax.train.mesh import global_batch
    from mulm_jax.train.metrics import MetricsWriter

    cfg = load_config(args.config)
    tc = cfg.train
    B, T = tc.batch_size, tc.seq_len or cfg.model.max_seq_len
    dataset = prepare_dataset(cfg.data)
    steps = run_steps(cfg, Tokenizer.load(dataset).pad_id, T)
    train_step = steps.train_step
    run = {"state": steps.fresh_state()}

    def shard(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return global_batch(batch, steps.mesh)

    threaded = make_loader(dataset, "train", B, T, tc.seed)
    inline = make_loader(dataset, "train", B, T, tc.seed, num_threads=0)
    host_batches = [next(inline) for _ in range(16)]
    on_device = shard(host_batches[0])
    dispatch: list[float] = []

    def step(batch: Any) -> Any:
        start = time.perf_counter()
        run["state"], metrics = train_step(run["state"], batch)
        dispatch.append(time.perf_counter() - start)
        return metrics

    jax.block_until_ready(step(on_device))  # compiles
    tmp = tempfile.TemporaryDirectory(prefix="profile_train_loop_")
    writer = MetricsWriter(Path(tmp.name))

    def with_metrics(every: int) -> Callable[[int], None]:
        pending: list[Any] = []

        def body(i: int) -> None:
            pending.append(step(shard(next(threaded))))
            if (i + 1) % every == 0:
                rows = jax.device_get(pending)  # as the loop does
                pending.clear()
                writer.write({"step": i, **{k: float(v) for k, v in rows[-1].items()}})

        return body

    variants: dict[str, Callable[[int], None]] = {
        "step, batch on the device": lambda i: step(on_device),
        "+ batch from the host": lambda i: step(shard(host_batches[i % len(host_batches)])),
        "+ loader (1 thread)": lambda i: step(shard(next(threaded))),
        "+ loader (in this thread)": lambda i: step(shard(next(inline))),
        f"+ metrics at log steps ({tc.log_every})": with_metrics(tc.log_every),
        "+ metrics every step": with_metrics(1),
    }
    ms: dict[str, list[float]] = {name: [] for name in variants}
    cpu_ms: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}  # (this thread, the process)
    for round_ in range(args.rounds + 1):  # the first round warms up (a batch placed otherwise compiles anew)
        for name, body in variants.items():
            jax.block_until_ready(run["state"])
            start, thread_start, process_start = time.perf_counter(), time.thread_time(), time.process_time()
            for i in range(args.steps):
                body(i)
            thread_end = time.thread_time()
            jax.block_until_ready(run["state"])
            if round_:
                ms[name].append((time.perf_counter() - start) / args.steps * 1e3)
                cpu_ms[name].append(
                    (
                        (thread_end - thread_start) / args.steps * 1e3,
                        (time.process_time() - process_start) / args.steps * 1e3,
                    )
                )
    writer.close()
    dispatch.clear()
    for batch in host_batches:
        step(batch)
    jax.block_until_ready(run["state"])
    loader_ms = []
    for _ in range(50):
        start = time.perf_counter()
        next(inline)
        loader_ms.append((time.perf_counter() - start) * 1e3)

    floor = statistics.median(ms["step, batch on the device"])
    print(
        f"{args.config}: batch {B} x {T}, {jax.device_count()} device(s); {args.rounds} rounds x {args.steps} steps, medians; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  {'':32s} {'wall':>7s}          {'':9s}            CPU ms/step: loop thread, process")
    for name, values in ms.items():
        median = statistics.median(values)
        thread_cpu = statistics.median(c[0] for c in cpu_ms[name])
        process_cpu = statistics.median(c[1] for c in cpu_ms[name])
        print(
            f"  {name:32s} {median:7.2f} ms/step  ({median - floor:+6.2f})  {B * T / median * 1e3:9,.0f} tokens/s  "
            f"{thread_cpu:6.2f} {process_cpu:7.2f}"
        )
    print(f"  step call (dispatch)             {statistics.median(dispatch) * 1e3:7.2f} ms")
    print(f"  next(loader), in this thread     {statistics.median(loader_ms):7.2f} ms")
    print(json.dumps({name: statistics.median(values) for name, values in ms.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
