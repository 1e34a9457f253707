"""Training-step speed on the shakespeare_char recipe (batch 12 x 64) against nanoGPT's, measured in the same run.

    .venv/bin/pip install -r bench/requirements.txt     # PyTorch, for the nanoGPT reference
    .venv/bin/python -m bench.bench_train_step [--check]

Our step is the trainer's own (mulm_jax.train.loop.run_steps: forward, backward, clip_by_global_norm 1.0, AdamW
with a warm-up + cosine schedule and weight decay on dense kernels only, jitted over the train.mesh of this
process's devices with the state donated), under the trainer's process settings (mulm_jax.startup.start_training: on the CPU, one device per core that the
batch splits over, and configure_process; --plain leaves them out: one device, XLA's defaults). The reference is
bench/reference_nanogpt.py in a process of its own, so that neither runtime's settings or threads touch the other;
the two take turns round by round, and each figure is the median over all rounds. Prints compile time, forward,
forward+backward and full-step medians, tokens/s and the ratio nanoGPT ms / our ms; with --check, exits 1 when
that ratio is below --min-ratio (1.25).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import call_times, median_ms

ROOT = Path(__file__).resolve().parent.parent
MIN_RATIO = 1.25


class Reference:
    """bench/reference_nanogpt.py --serve in a child process: `steps(n)` runs n of its iterations there."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.reference_nanogpt", "--serve"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def steps(self, count: int) -> list[float]:
        self.proc.stdin.write(f"{count + 1}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())[1:]  # the first settles threads and caches

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def build(config_path: str) -> dict[str, Any]:
    """The run's own steps for the config's recipe, its state at step 0, and random [B, T] int32 global batches."""
    import jax
    import numpy as np

    from mulm_jax.config import load_config
    from mulm_jax.train.loop import run_steps
    from mulm_jax.train.mesh import global_batch
    from mulm_jax.train.step import batch_sums

    cfg = load_config(config_path)
    tc = cfg.train
    B, T = tc.batch_size, tc.seq_len or cfg.model.max_seq_len
    steps = run_steps(cfg, None, T)
    rng = np.random.default_rng(tc.seed)
    batches = [
        global_batch(
            {
                "inputs": rng.integers(0, cfg.model.vocab_size, (B, T), dtype=np.int32),
                "targets": rng.integers(0, cfg.model.vocab_size, (B, T), dtype=np.int32),
            },
            steps.mesh,
        )
        for _ in range(8)
    ]

    def loss_fn(params, batch):
        sums = batch_sums(steps.model, params, batch, None)
        return sums["loss_sum"] / sums["count"]

    return {
        "cfg": cfg,
        "tokens": B * T,
        "state": steps.fresh_state(),
        "batches": batches,
        "step": steps.train_step,
        "forward": jax.jit(loss_fn),
        "forward_backward": jax.jit(jax.value_and_grad(loss_fn)),
    }


def main() -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char.yaml"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round, for each of the five timings")
    parser.add_argument("--plain", action="store_true", help="leave out start_training(): one device, XLA's defaults")
    parser.add_argument("--no-reference", action="store_true", help="time ours only (no PyTorch needed)")
    parser.add_argument("--check", action="store_true", help="exit 1 below --min-ratio")
    parser.add_argument("--min-ratio", type=float, default=MIN_RATIO)
    args = parser.parse_args()
    if not args.no_reference and importlib.util.find_spec("torch") is None:  # the reference's child would crash
        parser.error(
            "the nanoGPT reference needs PyTorch: install it with `.venv/bin/pip install -r "
            "bench/requirements.txt`, or pass --no-reference to time ours alone"
        )

    if not args.plain:
        from mulm_jax.config import load_config
        from mulm_jax.startup import start_training

        start_training(load_config(args.config).train)
    import jax

    run = build(args.config)
    batches = run["batches"]
    state = {"state": run["state"], "i": 0}

    def step():
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        state["state"], metrics = run["step"](state["state"], batch)
        return metrics["loss"]

    compile_start = time.perf_counter()
    jax.block_until_ready(step())
    compile_s = time.perf_counter() - compile_start
    startup_s = time.perf_counter() - started
    forward = lambda: run["forward"](state["state"].params, batches[0])  # noqa: E731
    forward_backward = lambda: run["forward_backward"](state["state"].params, batches[0])  # noqa: E731

    reference = None if args.no_reference else Reference()
    times: dict[str, list[float]] = {"forward": [], "forward_backward": [], "step": [], "nanogpt": []}
    try:
        for _ in range(args.rounds):
            if reference is not None:
                times["nanogpt"] += reference.steps(args.steps)
            times["step"] += call_times(step, args.steps)
            times["forward"] += call_times(forward, args.steps)
            times["forward_backward"] += call_times(forward_backward, args.steps)
    finally:
        if reference is not None:
            reference.close()

    tokens = run["tokens"]
    model_cfg = run["cfg"].model
    print(
        f"{args.config}: {model_cfg.num_layers} layers x {model_cfg.d_model}, {model_cfg.num_heads} heads, "
        f"{tokens} tokens/step; {args.rounds} rounds x {args.steps} steps, medians"
    )
    print(
        f"settings: {'XLA defaults (--plain)' if args.plain else 'start_training()'}, {jax.device_count()} device(s); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"compile + first step {compile_s:.1f} s; start-up to first step done {startup_s:.1f} s")
    for name in ("forward", "forward_backward"):
        print(f"ours     {name.replace('_', '+'):<17} {median_ms(times[name]):7.1f} ms")
    ours_ms = median_ms(times["step"])
    print(f"ours     train step        {ours_ms:7.1f} ms  {tokens / ours_ms * 1e3:9,.0f} tokens/s")
    if reference is None:
        return 0
    ref_ms = median_ms(times["nanogpt"])
    ratio = ref_ms / ours_ms
    print(
        f"nanoGPT  train step        {ref_ms:7.1f} ms  {tokens / ref_ms * 1e3:9,.0f} tokens/s  "
        f"(PyTorch {reference.info['torch']}, {reference.info['threads']} threads)"
    )
    verdict = "ok" if ratio >= args.min_ratio else "BELOW TARGET"
    print(f"speed-up over nanoGPT: {ratio:.2f}x (target {args.min_ratio}x): {verdict}")
    return 1 if args.check and ratio < args.min_ratio else 0


if __name__ == "__main__":
    sys.exit(main())
