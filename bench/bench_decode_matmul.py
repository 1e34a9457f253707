"""Why the engine serves with dense kernels held [out, in] (mulm_jax.infer.layout): feed-forward stacks at 1 and 8 rows.

    .venv/bin/python -m bench.bench_decode_matmul

Times a stack of feed-forward layers (x + gelu(x @ W1) @ W2, as many as the model has) for the 6x384 character
model and GPT-2 small, at batch 1 and 8, three ways: Flax's [in, out] kernels (x @ W); kernels held [out, in]
and contracted on their last axis (x @ W^T); and the serving layout's product (infer.layout.times_transposed:
for a few rows, (W @ x^T)^T behind an optimization barrier). Prints the medians and the ratio of the first to
the last.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax

from bench.harness import call_times, median_ms
from mulm_jax.infer.layout import times_transposed
from mulm_jax.platform import configure_process


def stack(product):
    """x through the feed-forward layers, each product made by `product(x, w)`."""

    def run(x, ups, downs):
        for up, down in zip(ups, downs):
            x = x + product(jax.nn.gelu(product(x, up)), down)
        return x

    return jax.jit(run)


def main() -> None:
    configure_process()
    key = jax.random.key(0)
    ways = {
        "x @ W[in,out]": (stack(lambda x, w: x @ w), False),
        "x @ W[out,in]^T": (stack(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())))), True),
        "serving layout": (stack(times_transposed), True),
    }
    for name, d, f, layers in (("6x384 char model", 384, 1536, 6), ("GPT-2 small", 768, 3072, 12)):
        ups = [jax.random.normal(jax.random.fold_in(key, i), (d, f)) * 0.02 for i in range(layers)]
        downs = [jax.random.normal(jax.random.fold_in(key, 100 + i), (f, d)) * 0.02 for i in range(layers)]
        held = {False: (ups, downs), True: ([w.T.copy() for w in ups], [w.T.copy() for w in downs])}
        for batch in (1, 8):
            x = jnp.full((batch, d), 0.1)
            times = {way: median_ms(call_times(lambda: fn(x, *held[out_in]), 31)) for way, (fn, out_in) in ways.items()}
            first, last = times["x @ W[in,out]"], times["serving layout"]
            print(
                f"{name}: {layers} feed-forward layers {d}x{f}, batch {batch}: "
                + ", ".join(f"{way} {ms:6.2f} ms" for way, ms in times.items())
                + f" ({first / last:.2f}x)"
            )


if __name__ == "__main__":
    main()
