"""Process settings that make XLA:CPU fast on small machines: call `configure_cpu()` before the first computation."""

from __future__ import annotations

import ctypes

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Have glibc keep memory that XLA frees instead of handing it back to the kernel; False where there is no mallopt.

    Each XLA:CPU step allocates and frees its temporary buffers. By default glibc unmaps freed per-thread heaps
    and trims the main one, so the next step touches fresh pages: about 10,000 page faults and a third of the
    time of a shakespeare_char step. A 64 MiB top pad keeps each heap mapped (a heap is at most 64 MiB), and a
    fixed 32 MiB mmap threshold (glibc's largest) serves buffers below it from those heaps from the first step.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TOP_PAD, 64 << 20), (_M_TRIM_THRESHOLD, 1 << 30)))


def configure_cpu() -> None:
    """The process settings for XLA:CPU: keep_freed_memory(). Call it early, before the first computations."""
    keep_freed_memory()
