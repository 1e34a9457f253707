"""Loader throughput on the shakespeare_char recipe (batch 12 x 64), against the rate training consumes tokens.

    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.bench_loader

Prints tokens/s, the training rate it is compared to and their ratio; exits 1 when the ratio is below the limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from mulm_jax.config import DataConfig
from mulm_jax.data import assemble, make_loader

TRAINING_TOKENS_PER_S = 14_000  # what the shakespeare_char recipe consumes (nanoGPT's CPU recipe: ~11,000)
MIN_RATIO = 20


def tokens_per_second(dataset, batches: int, batch_size: int, seq_len: int, mode: str, num_threads: int) -> float:
    it = make_loader(
        dataset, "train", batch_size, seq_len, seed=0, mode=mode, shard_index=0, shard_count=1, num_threads=num_threads
    )
    next(it)  # start-up (thread pool, first reads) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["inputs"].shape == (batch_size, seq_len)
    return batches * batch_size * seq_len / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", help="data set folder to assemble into (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = assemble(DataConfig(sources=("tinyshakespeare",), tokenizer="char", out_dir=args.out or tmp)).path
        worst = float("inf")
        for mode in ("random_windows", "packed"):
            for num_threads in (0, 1):
                rate = tokens_per_second(dataset, args.batches, args.batch_size, args.seq_len, mode, num_threads)
                ratio = rate / TRAINING_TOKENS_PER_S
                worst = min(worst, ratio)
                print(
                    f"{mode:<14} threads={num_threads}  {rate:>12,.0f} tokens/s  training {TRAINING_TOKENS_PER_S:,} "
                    f"tokens/s  ratio {ratio:6.1f}x  (limit {MIN_RATIO}x)"
                )
    print(f"worst ratio {worst:.1f}x: {'ok' if worst >= MIN_RATIO else 'BELOW LIMIT'}")
    return 0 if worst >= MIN_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
