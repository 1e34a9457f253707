"""What every benchmark shares: timing a call as the median of repeats (a reference is timed the same way, in the same
run, so that a figure is read as a ratio on a noisy shared machine)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
