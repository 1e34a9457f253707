"""Process settings that make XLA:CPU training fast on small machines: call `configure_cpu()` before JAX starts."""

from __future__ import annotations

import ctypes
import os
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

XLA_CPU_FLAGS: tuple[str, ...] = ()


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
    """Apply keep_freed_memory() and add XLA_CPU_FLAGS to XLA_FLAGS (a flag already there is left as it is).

    XLA reads XLA_FLAGS when its CPU backend starts, so call this before the first JAX computation; raises
    RuntimeError if a backend is already running.
    """
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        raise RuntimeError("configure_cpu() must run before JAX's first computation: XLA_FLAGS are read at start-up")
    keep_freed_memory()
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {flag.split("=", 1)[0] for flag in flags}
    flags += [flag for flag in XLA_CPU_FLAGS if flag.split("=", 1)[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags)
