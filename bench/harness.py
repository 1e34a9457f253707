"""What every benchmark shares: timing a call as the median of repeats (a reference is timed the same way, in the same
run, so that a figure is read as a ratio on a noisy shared machine)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def call_times(fn: Callable[[], Any], count: int) -> list[float]:
    """Wall seconds of each of `count` calls of fn, each waited for (jax.block_until_ready on what it returns); one
    untimed call first settles threads and caches."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(count):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall seconds of `repeats` calls of fn (each waited for, after one untimed call)."""
    return statistics.median(call_times(fn, repeats))
