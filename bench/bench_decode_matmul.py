"""Why decode at batch 8 scales poorly on XLA:CPU: the weight layout of the projection matmuls.

    .venv/bin/python -m bench.bench_decode_matmul

Times a stack of feed-forward-sized projections (the 6x384 character model's and GPT-2 small's) at batch 1 and 8,
with the weights stored [in, out] as the model holds them (x @ W) and stored [out, in] as PyTorch's nn.Linear
holds them (W^T @ x^T). Prints the medians and the ratio. On the 2-core dev machine, batch 8 took 43.2 ms as
x @ W and 16.9 ms as W^T @ x^T for GPT-2's 24 projections (batch 1: 14.5 and 13.1 ms): XLA:CPU's matmul for a
few rows against a row-major [in, out] weight copies (packs) the weight as it goes.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def median_ms(fn, *args, repeats: int = 31) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    key = jax.random.key(0)
    in_out = jax.jit(lambda x, ws: sum((x @ w).sum() for w in ws))
    out_in = jax.jit(lambda x, ws: sum(jnp.matmul(w, x.T).sum() for w in ws))
    for name, d, f, count in (("6x384 char model", 384, 1536, 12), ("GPT-2 small", 768, 3072, 24)):
        weights = [jax.random.normal(jax.random.fold_in(key, i), (d, f)) * 0.02 for i in range(count)]
        transposed = [w.T.copy() for w in weights]
        for batch in (1, 8):
            x = jnp.ones((batch, d))
            a, b = median_ms(in_out, x, weights), median_ms(out_in, x, transposed)
            print(f"{name}: {count} projections {d}x{f}, batch {batch}: x @ W[in,out] {a:6.2f} ms, "
                  f"W[out,in] @ x^T {b:6.2f} ms ({a / b:.2f}x)")


if __name__ == "__main__":
    main()
