"""Memory bandwidth, the ceiling a memory-bound decode step runs against: a jitted GEMV, and numpy STREAM-style.

    .venv/bin/python -m bench.memory_bandwidth

The decode targets (issue 17) use `gemv_bandwidth_gb_s`: XLA reading a 512 MB float32 matrix once per product,
as a decode step reads its weights. A numpy copy shows less (it writes as much as it reads).
"""

from __future__ import annotations

import numpy as np

from bench.harness import timed
from mulm_jax.infer.cli import gemv_bandwidth_gb_s


def copy_bandwidth_gb_s(size_mb: int = 256, repeats: int = 9) -> float:
    """GB/s (bytes read + bytes written) of copying a size_mb float64 array into a preallocated one."""
    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    return 2 * src.nbytes / timed(lambda: np.copyto(dst, src), repeats) / 1e9


def read_bandwidth_gb_s(size_mb: int = 256, repeats: int = 9) -> float:
    """GB/s (bytes read) of summing a size_mb float64 array."""
    src = np.ones(size_mb * 2**20 // 8)
    return src.nbytes / timed(src.sum, repeats) / 1e9


if __name__ == "__main__":
    print(f"gemv: {gemv_bandwidth_gb_s():.1f} GB/s (jitted x @ W, 512 MB float32 W read)")
    print(f"copy: {copy_bandwidth_gb_s():.1f} GB/s (read + write)")
    print(f"read: {read_bandwidth_gb_s():.1f} GB/s")
