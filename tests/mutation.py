"""`make mutation`: mutmut over the core modules, each against its own test files, and the score of each.

    .venv/bin/python tests/mutation.py [--recheck] [positional optimizer ...]   (default: every module below)

Each module is mutated in a folder of its own, $TMPDIR/mulm_jax-mutation/NAME (a copy of the package and the tests,
so the checkout is never touched), and only the module's test files run against its mutants. mutmut remembers what it
has checked there: a second run tests only the functions that changed. A message of a raised error or a log line
is not mutated (the tests match a message by a part of it, so "XX"-wrapped text would pass them all). Prints each
module's score (mutants caught / mutants); exits 1 when one is below TARGET. docs/mutation.md lists the survivors.

mutmut keeps a verdict until the function it mutated changes, so a survivor stays one after a test that kills it is
added: --recheck runs the last run's survivors again, against the tests as they are now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.85
# name -> (module, its tests): the tests of the whole training loop are left out, minutes for each mutant they reach
MODULES = {
    "sampling": ("mulm_jax/infer/sampling.py", ["tests/infer/test_infer_sampling.py"]),
    "optimizer": (
        "mulm_jax/train/optimizer.py",
        [
            "tests/train/test_optimizer.py",
            "tests/train/test_train.py::test_schedule_warms_up_then_decays_to_min_lr",
            "tests/train/test_train.py::test_each_optimizer_descends_on_a_quadratic",
        ],
    ),
    "step": (
        "mulm_jax/train/step.py",
        [
            "tests/train/test_train_step.py",
            "tests/train/test_train.py::test_loss_is_mean_cross_entropy_over_non_pad_targets",
            "tests/train/test_train.py::test_gradient_accumulation_equals_one_large_batch",
            "tests/train/test_train.py::test_remat_recomputes_to_the_same_gradients",
        ],
    ),
    "positional": ("mulm_jax/nn/positional.py", ["tests/nn/test_positional.py"]),
    "attention": ("mulm_jax/nn/attention.py", ["tests/nn/test_attention.py", "tests/infer/test_ring_cache.py"]),
}
WORK = Path(tempfile.gettempdir()) / "mulm_jax-mutation"
MUTMUT = str(Path(sys.executable).parent / "mutmut")
COPIED = ["mulm_jax", "tests", "configs", "serve.py", "pytest.ini"]


def setup_cfg(module: str, tests: list[str]) -> str:
    lines = [
        "[mutmut]",
        "source_paths = mulm_jax",
        f"only_mutate = {module}",
        "pytest_add_cli_args_test_selection =",
        *(f"    {t}" for t in tests),
        "pytest_add_cli_args = -p no:cacheprovider",
        "also_copy =",
        *(f"    {p}" for p in COPIED if p not in ("mulm_jax", "tests")),
        "do_not_mutate_patterns =",
        r"    ^\s*raise ",
        r"    \blog\.(debug|info|warning|error)\(",
        # a fork server that imports the tests but starts no JAX backend: each mutant's process starts its own
        "process_isolation = forkserver",
    ]
    return "\n".join(lines) + "\n"


def survivors(work: Path, env: dict) -> list[str]:
    """The mutants of the last run in `work` that no test failed on."""
    lines = subprocess.run(
        [MUTMUT, "results"], cwd=work, env=env, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return [line.strip().rsplit(": ", 1)[0] for line in lines if line.strip().endswith(": survived")]


def run(name: str, recheck: bool = False) -> dict:
    module, tests = MODULES[name]
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for path in COPIED:
        source, target = ROOT / path, work / path
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (work / "setup.cfg").write_text(setup_cfg(module, tests))
    # Every mutant's process compiles the same unchanged functions: a compilation cache shared by them spares that.
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(work / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    start = time.monotonic()
    again = survivors(work, env) if recheck and (work / "mutants").is_dir() else []
    subprocess.run([MUTMUT, "run"], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    if again:
        subprocess.run([MUTMUT, "run", *again], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([MUTMUT, "export-cicd-stats"], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    # a mutant that hangs the tests or crashes the process is caught as surely as one that fails them
    caught = stats["killed"] + stats["timeout"] + stats["segfault"]
    return {
        "module": module,
        **stats,
        "caught": caught,
        "score": caught / max(stats["total"], 1),
        "minutes": (time.monotonic() - start) / 60,
        "survivors": survivors(work, env),
    }


def main(args: list[str]) -> int:
    recheck = "--recheck" in args
    names = [a for a in args if a != "--recheck"]
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        print(f"unknown module(s) {unknown}; expected some of {list(MODULES)}", file=sys.stderr)
        return 2
    results = []
    for name in names or list(MODULES):
        r = run(name, recheck)
        results.append(r)
        print(
            f"{r['module']}: {r['caught']}/{r['total']} mutants caught ({100 * r['score']:.1f}%; {r['timeout']} of "
            f"them by a timeout), {r['survived']} survived, {r['no_tests']} not reached by its tests; "
            f"{r['minutes']:.1f} min",
            flush=True,
        )
        for survivor in r["survivors"]:
            print(f"  survived: {survivor}  (mutmut show {survivor}, in {WORK / name})")
    return 0 if all(r["score"] >= TARGET for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
