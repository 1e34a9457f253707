"""The choices that depend on the backend that runs (CPU, GPU, TPU), made in one place for training and serving.

On the CPU backend (XLA:CPU on small machines): glibc keeps the memory XLA frees mapped (`keep_freed_memory`),
the decode steps get XLA:CPU compiler options, serving holds each dense kernel [out, in] and multiplies a few
rows weight-first behind an optimization barrier (infer.layout), and weights are served in float32 whatever the
config's dtype, since XLA:CPU has no fast bfloat16 arithmetic. On any other backend none of these apply: the
natural Flax layout, no compiler options, weights stored and computed in the config's dtype.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Optional

import jax

from mulm_jax.errors import MulmError

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# XLA:CPU otherwise copies every cache buffer that a decode step both reads and updates in place.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def backend() -> str:
    """The platform of the default backend: 'cpu', 'gpu' or 'tpu'. Every choice below asks this."""
    return jax.default_backend()


def on_cpu() -> bool:
    return backend() == "cpu"


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
    return all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TOP_PAD, 64 << 20), (_M_TRIM_THRESHOLD, 1 << 30))
    )


def training_cpu_devices(requested: int, batch_size: int, accum_steps: int, cores: Optional[int] = None) -> int:
    """How many XLA devices a training run splits the host CPU into (train.mesh.cpu_devices): `requested` where
    it is above 0; for 0, one per core this process may use, or the largest count below that which splits the
    batch's rows evenly over the devices and the accumulation steps (1 where none does).

    XLA:CPU runs one device's program a kernel at a time, and a small model's step is hundreds of small kernels
    that each take one thread: on 2 cores, nanoGPT's CPU recipe (12 x 64 tokens) leaves a core idle for much of a
    65 ms step. Devices side by side, each its share of the rows (the batch split over the mesh's data axis, the
    gradients summed between them), keep every core busy: 43 ms a step on 2 devices."""
    if requested > 0:
        return requested
    cores = cores or len(os.sched_getaffinity(0))
    return max((n for n in range(1, cores + 1) if batch_size % (n * accum_steps) == 0), default=1)


def split_cpu(count: int, requested: bool) -> bool:
    """Have the CPU backend make `count` devices (jax_num_cpu_devices): call it before anything starts the
    backend. A chosen count (`requested` False) gives way to an explicit --xla_force_host_platform_device_count
    in XLA_FLAGS, and to a backend that has already started (a run inside a process that computed before, as the
    tests run); a requested one that cannot be had is an error. True when the setting was made."""
    if not requested and "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backend has started with its devices
        if requested and on_cpu() and jax.local_device_count() != count:
            raise MulmError(
                f"train.mesh.cpu_devices={count}: this process's CPU backend has already started with "
                f"{jax.local_device_count()} device(s); set it before anything computes (train.py does)"
            ) from None
        return False
    return True


def replicas_fit(replica_bytes: int, devices: int) -> bool:
    """Whether `devices` whole copies of a training state of `replica_bytes` fit in half this host's memory:
    CPU devices share it, so a data-parallel mesh over them holds one copy per device."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return replica_bytes * devices <= host // 2


def configure_process() -> bool:
    """The process settings for the backend: keep_freed_memory() on the CPU, nothing elsewhere. Call it before the
    first steps (after jax.distributed.initialize, since it asks for the backend); True when a setting was made."""
    return on_cpu() and keep_freed_memory()


def compiler_options() -> Optional[dict[str, Any]]:
    """XLA compiler options for the decode steps: CPU_COMPILER_OPTIONS on the CPU, none elsewhere."""
    return dict(CPU_COMPILER_OPTIONS) if on_cpu() else None


def weight_first_serving() -> bool:
    """Whether serving holds dense kernels [out, in] and multiplies a few rows weight-first (infer.layout): on the
    CPU only. Elsewhere the natural [in, out] kernels, which a GPU's matmul libraries take as they are."""
    return on_cpu()


def serving_dtype(dtype: str) -> str:
    """The dtype weights are served in (stored and computed), for a model configured with `dtype`: that dtype,
    except float32 on the CPU, where bfloat16 arithmetic is widened op by op (about 10x slower decode)."""
    return "float32" if on_cpu() else dtype


# Above this many bytes of one layer's float32 scores [B, H, T, S], `auto` attention goes blockwise (where cuDNN's
# cannot run): mulm_1gb at 8 x 2048 would hold 2 GiB of scores and as much of probabilities per layer; the demo and
# llama_tiny configs at their batches stay dense, which is faster on the CPU at their lengths.
DENSE_SCORES_BYTES = 256 << 20


def attention_implementation(
    requested: str, scores_bytes: int, cudnn_unsupported: Optional[str], on: Optional[str] = None
) -> str:
    """The self-attention implementation of a whole pass (nn.efficient_attention): "dense", "blockwise" or "cudnn".

    requested: model.attention_impl. scores_bytes: one layer's float32 scores [B, H, T, S] held dense.
    cudnn_unsupported: why cuDNN's flash attention cannot take this attention (None: it can). "auto" takes cuDNN's
    on a GPU where it can run, else blockwise above DENSE_SCORES_BYTES, else dense; "cudnn" where it cannot run is
    an error naming why. on: the backend to choose for (default: this one's; the memory plan asks for a GPU's)."""
    on = on or backend()
    if requested == "cudnn":
        why = cudnn_unsupported if on == "gpu" else f"this backend is {on}, cuDNN's needs a GPU"
        if why:
            raise MulmError(f"model.attention_impl=cudnn cannot run: {why}; use auto, dense or blockwise")
        return "cudnn"
    if requested != "auto":
        return requested
    if on == "gpu" and cudnn_unsupported is None:
        return "cudnn"
    return "blockwise" if scores_bytes > DENSE_SCORES_BYTES else "dense"


def peak_device_memory() -> Optional[int]:
    """Peak bytes in use on the first local device so far, where the backend reports it (GPU, TPU); else None."""
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
