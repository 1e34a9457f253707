"""Start-up of the commands that compile: JAX's persistent compilation cache, the backend's process settings, and
the wall time of each start-up phase (what `--verbose` prints)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from mulm_jax.config import TrainConfig

CACHE_ENV = "MULM_COMPILATION_CACHE"  # a folder, or "off"


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """~/.cache/mulm_jax/xla, or under $XDG_CACHE_HOME where that is set."""
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mulm_jax" / "xla"


def cache_dir(flag: Optional[str], off: bool, environ: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The compilation cache folder: --compilation-cache DIR, else $MULM_COMPILATION_CACHE, else
    default_cache_dir(); None (no cache) with --no-compilation-cache or MULM_COMPILATION_CACHE=off."""
    if off:
        return None
    chosen = flag or environ.get(CACHE_ENV)
    if chosen == "off":
        return None
    return Path(chosen).expanduser() if chosen else default_cache_dir(environ)


def enable_compilation_cache(folder: str | Path) -> None:
    """Have JAX keep every compiled program in `folder` and reuse it in later processes (same program, same
    shapes, same jax and backend); on a GPU, XLA's autotuning results are kept there too. Call it before the
    first compilation: a process that has compiled without a cache keeps going without one."""
    import jax

    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # JAX's defaults keep only programs that took over a second to compile and lets the file system raise the
    # size floor; a small model's decode and train steps compile faster than that on a fast machine.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def add_startup_arguments(parser: argparse.ArgumentParser) -> None:
    """--compilation-cache DIR and --no-compilation-cache."""
    parser.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help=f"keep compiled steps here for later starts (default: ${CACHE_ENV}, else ~/.cache/mulm_jax/xla)",
    )
    parser.add_argument("--no-compilation-cache", action="store_true", help="compile everything afresh")


def start(args: argparse.Namespace, train: Optional[TrainConfig] = None) -> Optional[Path]:
    """The start of a command: the compilation cache its arguments choose, then the backend's process settings
    (platform.configure_process; for a training run on `train`, start_training's). Call it after
    jax.distributed.initialize, before the first compilation. Returns the cache folder (None: no cache)."""
    from mulm_jax import platform

    folder = cache_dir(getattr(args, "compilation_cache", None), getattr(args, "no_compilation_cache", False))
    if folder is not None:
        enable_compilation_cache(folder)
    if train is None:
        platform.configure_process()
    else:
        start_training(train)
    return folder


def start_training(train: TrainConfig) -> int:
    """A training process's settings, as train.py makes them (and the benchmarks that time its step): the CPU
    split into the devices of train.mesh.cpu_devices (platform.training_cpu_devices; a multi-process run keeps
    one per process unless it names a count), then platform.configure_process. Call it before anything starts
    the backend. Returns the device count chosen (platform.split_cpu says when the backend keeps its own)."""
    import jax

    from mulm_jax import platform

    requested = train.mesh.cpu_devices
    count = 1
    if requested or not jax.distributed.is_initialized():
        count = platform.training_cpu_devices(requested, train.batch_size, train.grad_accum_steps)
        platform.split_cpu(count, requested=requested > 0)
    platform.configure_process()
    return count


class Phases:
    """Wall seconds of consecutive phases: each `mark(name)` ends the phase that ran since the previous mark."""

    def __init__(self, start: Optional[float] = None):
        self.last = time.perf_counter() if start is None else start
        self.seconds: dict[str, float] = {}

    def mark(self, name: str, *computed: Any) -> None:
        """End phase `name` (a repeated name adds up), after waiting for `computed` arrays: JAX dispatches work
        asynchronously, and its time belongs to the phase that asked for it."""
        if computed:
            import jax

            jax.block_until_ready(computed)
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def line(self) -> str:
        """'a 0.1 s, b 2.3 s (total 2.4 s)'."""
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
        return f"{parts} (total {sum(self.seconds.values()):.1f} s)"
