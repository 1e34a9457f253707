"""Functions jitted per prompt bucket: the buckets, the padding, one compilation per bucket, counted, under a lock."""

from __future__ import annotations

import threading
import time

import jax.numpy as jnp
import numpy as np

from mulm_jax.infer.buckets import CompiledPerBucket, prompt_buckets


def test_buckets_are_powers_of_two_from_16_up_to_the_context():
    assert prompt_buckets(64) == (16, 32, 64)
    assert prompt_buckets(40) == (16, 32, 40)
    assert prompt_buckets(8) == (8,)


def test_ids_are_zero_padded_to_the_smallest_bucket_that_holds_them_or_to_a_given_one():
    compiled = CompiledPerBucket(64)
    ids_1xL = compiled.pad([5, 6, 7])
    assert ids_1xL.dtype == np.int32
    np.testing.assert_array_equal(ids_1xL, [[5, 6, 7] + [0] * 13])
    assert compiled.pad([]).shape == (1, 16)
    assert compiled.pad([1] * 17).shape == (1, 32)
    assert compiled.pad([1] * 3, bucket=64).shape == (1, 64)


def test_each_bucket_compiles_once_and_every_function_counts():
    compiled = CompiledPerBucket(64)
    total = compiled.jit(lambda ids_1xL: ids_1xL.sum())
    scaled = compiled.jit(lambda ids_1xL, *, scale: ids_1xL * scale, static_argnames=("scale",))
    for n in (1, 10, 16):
        assert int(total(compiled.pad(range(n)))) == n * (n - 1) // 2
    assert compiled.compilations == 1
    total(compiled.pad(range(17)))
    assert compiled.compilations == 2
    np.testing.assert_array_equal(scaled(compiled.pad([1, 2]), scale=3)[0, :2], [3, 6])
    scaled(compiled.pad([4]), scale=3)
    assert compiled.compilations == 3
    scaled(compiled.pad([4]), scale=2)  # a static argument's new value is a new compilation
    assert compiled.compilations == 4


def _in_threads(call, n: int = 2) -> list:
    """call(i) in n threads started together; their results."""
    start, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        start.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_threads_calling_with_one_new_bucket_compile_it_once():
    compiled = CompiledPerBucket(64)

    def slow_to_trace(ids_1xL):
        time.sleep(0.2)  # while one thread traces, the others arrive
        return jnp.cumsum(ids_1xL)

    cumsum = compiled.jit(slow_to_trace)
    results = _in_threads(lambda i: np.asarray(cumsum(compiled.pad([1, 2, 3]))), n=3)
    assert compiled.compilations == 1
    for result in results:
        np.testing.assert_array_equal(result[:4], [1, 3, 6, 6])


def test_threads_with_different_new_buckets_trace_one_at_a_time_and_count_each():
    compiled, tracing, most = CompiledPerBucket(64), [], []

    def slow_to_trace(ids_1xL):
        tracing.append(ids_1xL.shape)
        most.append(len(tracing))
        time.sleep(0.2)
        tracing.pop()
        return ids_1xL.sum()

    total = compiled.jit(slow_to_trace)
    _in_threads(lambda i: total(compiled.pad([1] * (16 * i + 1))), n=3)  # buckets 16, 32 and 64
    assert compiled.compilations == 3
    assert max(most) == 1
