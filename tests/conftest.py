"""What every test process sets before JAX starts its backend, and the suite's fixtures (helpers: support.py)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

# The tests check algorithms against references, not a device's arithmetic: float32 matmuls run at full float32
# precision on every backend (a GPU's default is TF32, 10 mantissa bits: 80-95% of attention outputs then miss
# atol 1e-5), here and in the processes the tests start. A test of a device's tolerance would say so and set its own.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
jax.config.update("jax_default_matmul_precision", os.environ["JAX_DEFAULT_MATMUL_PRECISION"])
# No persistent compilation cache unless a test asks for one: tests stay independent of each other and of ~/.cache.
os.environ.setdefault("MULM_COMPILATION_CACHE", "off")
# The suite compiles hundreds of small programs and runs each a few times: XLA:CPU's LLVM optimisation costs more
# than it saves there (`make test` took 939 s with it, 533 s without). The arithmetic is float32 either way (the
# last bits may round differently, far inside the tests' tolerances); the benchmarks and the users' commands keep the
# default level. Read when the backend starts, so set before any test runs; the processes the tests start inherit
# it (a test that sets XLA_FLAGS for one appends to it: xla_flags()).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

# One CPU device for this process and the processes the tests start, unless a test asks for more (xla_flags()
# appends its own count, and the last one wins): train.py would split the CPU into a device per core
# (startup.start_training), where the suite's two workers already keep both cores busy and the devices would only
# wait on each other; and a test that ran train.py's main here would split it for every test after it.
# tests/train/test_cpu_devices.py tests that choice with the count taken out.
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=1"

# Imported after the settings above, which the backend reads when it starts.
from support import ROOT  # noqa: E402

jax.devices()  # started on those settings before any test runs, whatever a test's start-up would set


@pytest.fixture(autouse=True)
def trace_afresh_under_mutmut_stats():
    """`make mutation` (mutmut) learns which tests reach a function from the calls it sees while the tests run once,
    and a jitted function is called only when it is traced: without this, only the first test to trace a function
    would be run against its mutants (tests/mutation.py)."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        jax.clear_caches()
    yield


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")  # session-wide, so module fixtures that assemble a named corpus can use it too
def mirror() -> Path:
    """The folder of mirrored corpora (MULM_DATA_MIRROR); a test that needs it fails without it, never skips."""
    path = os.environ.get("MULM_DATA_MIRROR")
    if not path or not Path(path).is_dir():
        pytest.fail(
            f"this test reads the corpus mirror, but MULM_DATA_MIRROR={path!r} is not a folder: set it to a "
            "folder holding tinyshakespeare.txt, wikitext-2-valid.txt, wikitext-2-test.txt and "
            "sp-cc-32000.model (`make test` sets it to ../shared/data when that exists)",
            pytrace=False,
        )
    return Path(path)
