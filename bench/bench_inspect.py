"""Tracing speed: a 256-token prompt through the gpt2_small-sized config with random weights, after compilation.

    .venv/bin/python -m bench.bench_inspect [--config configs/gpt2_small.yaml] [--tokens 256] [--repeats 3]

Prints the compile + first trace time, the median trace time with the logit lens (12 layers x 256 positions x
50,257 logits) and without it, the plain forward pass of the same prompt as the floor measured in the same run,
and the ratios. Target (issue 12): a 256-token trace within 5 s after compilation, with no recompilation for
another prompt of the same length bucket.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from bench.harness import timed
from mulm_jax.config import load_config
from mulm_jax.infer.cli import random_model
from mulm_jax.inspect import Tracer
from mulm_jax.platform import configure_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gpt2_small.yaml")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_process()
    loaded = random_model(load_config(args.config))
    tracer = Tracer(loaded)
    vocab = loaded.config.model.vocab_size
    prompts = [np.random.default_rng(seed).integers(0, vocab, args.tokens).tolist() for seed in range(2)]
    start = time.perf_counter()
    tracer.trace(prompts[0])
    first = time.perf_counter() - start
    with_lens = timed(lambda: tracer.trace(prompts[1]), args.repeats)
    tracer.trace(prompts[1], lens=False)
    without_lens = timed(lambda: tracer.trace(prompts[0], lens=False), args.repeats)
    forward = jax.jit(lambda params, ids: loaded.model.apply({"params": params}, ids))
    ids = np.asarray([prompts[0]], np.int32)
    jax.block_until_ready(forward(loaded.params, ids))
    floor = timed(lambda: jax.block_until_ready(forward(loaded.params, ids)), args.repeats)
    figures = {
        "config": args.config,
        "tokens": args.tokens,
        "compile_and_first_s": round(first, 2),
        "trace_s": round(with_lens, 3),
        "trace_without_lens_s": round(without_lens, 3),
        "forward_s": round(floor, 3),
        "trace_over_forward": round(with_lens / floor, 2),
        "compilations": tracer.traces,
        "target_s": 5.0,
        "met": with_lens <= 5.0 and tracer.traces == 2,
    }
    print(
        f"{args.tokens}-token trace of {args.config}: compile + first {first:.1f} s; then {with_lens:.2f} s with "
        f"the logit lens, {without_lens:.2f} s without (median of {args.repeats}); the plain forward pass "
        f"{floor:.2f} s -> trace = {with_lens / floor:.1f}x the forward; {tracer.traces} compilations "
        f"(with and without the lens); target <= 5 s: {'met' if figures['met'] else 'NOT met'}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
