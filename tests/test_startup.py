"""Start-up: where the compilation cache lives (flag, environment, default, off), a second process reusing the steps
the first compiled, train.py --verbose naming its start-up phases, and a fresh run's cheap look for checkpoints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from support import ROOT, tiny_run
from mulm_jax.startup import CACHE_ENV, cache_dir, default_cache_dir
from mulm_jax.train import checkpoint
from mulm_jax.train import cli as train_cli
from mulm_jax.train.checkpoint import Checkpoints
from mulm_jax.train.step import TrainState


def test_the_cache_folder_comes_from_the_flag_then_the_environment_then_the_user_cache(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/mulm_jax/xla")
    assert cache_dir(None, False, {}) == default_cache_dir({})
    assert cache_dir(None, False, {CACHE_ENV: "/env/xla", **home}) == Path("/env/xla")
    assert cache_dir("/flag/xla", False, {CACHE_ENV: "/env/xla"}) == Path("/flag/xla")
    assert cache_dir("/flag/xla", True, {}) is None
    assert cache_dir(None, False, {CACHE_ENV: "off"}) is None
    assert cache_dir("/flag/xla", False, {CACHE_ENV: "off"}) == Path("/flag/xla")  # the flag wins


# A fresh process that records the modules JAX loads from its persistent cache, then runs the code given.
HITS = """
import json, logging, sys
hits = []
class Hits(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Persistent compilation cache hit for"):
            hits.append(record.getMessage().split("'")[1])
log = logging.getLogger("jax._src.compiler")
log.addHandler(Hits())
log.setLevel(logging.DEBUG)
"""
BENCH = (
    HITS
    + """
from mulm_jax.__main__ import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "hits": hits}))
"""
)
# A step that compiles in milliseconds, which JAX's own thresholds (1 s) would not keep.
SMALL_STEP = (
    HITS
    + """
import argparse, jax, jax.numpy as jnp
from mulm_jax import startup
parser = argparse.ArgumentParser()
startup.add_startup_arguments(parser)
startup.start(parser.parse_args(sys.argv[1:]))
def small_step(x):
    return jnp.tanh(x @ x.T).sum()
jax.block_until_ready(jax.jit(small_step)(jnp.ones((8, 8))))
print(json.dumps({"hits": hits}))
"""
)


def test_a_step_compiled_by_one_process_is_loaded_by_the_next(tmp_path):
    def start() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", SMALL_STEP, "--compilation-cache", str(tmp_path / "xla")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])["hits"]

    assert "jit_small_step" not in start()
    assert any(p.is_file() for p in (tmp_path / "xla").iterdir())
    assert "jit_small_step" in start()


@pytest.mark.slow  # two starts of bench decode, about 25 s
def test_a_second_start_with_the_same_shapes_loads_the_steps_from_the_compilation_cache(tmp_path):
    cache = tmp_path / "xla"
    args = [
        "bench",
        "decode",
        "--config",
        str(ROOT / "configs/shakespeare_char.yaml"),
        "--set",
        "model.d_model=16",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.d_ff=32",
        "model.max_seq_len=16",
        "--prompt-len",
        "4",
        "--new-tokens",
        "2",
        "--repeats",
        "1",
        "--json",
        "--compilation-cache",
        str(cache),
    ]

    def start() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", BENCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        return {**json.loads(lines[-1]), "bench": json.loads(lines[-2])}

    first = start()
    assert first["code"] == 0 and first["hits"] == []
    written = {p.name for p in cache.iterdir()}
    assert len(written) >= first["bench"]["compilations"]  # prefill per bucket, decode, and smaller programs
    second = start()
    assert {"jit__prefill", "jit__decode"} <= set(second["hits"])
    assert second["bench"]["compilations"] == first["bench"]["compilations"]  # traced again, not compiled


@pytest.mark.slow  # a whole tiny run: the first step, then the evaluation, sample and checkpoint at its end
def test_train_verbose_prints_each_start_up_phase(tmp_path, capsys):
    args = [
        "--config",
        str(ROOT / "configs/shakespeare_char.yaml"),
        "--workdir",
        str(tmp_path / "run"),
        "--quiet",
        "--verbose",
        "--set",
        *tiny_run(tmp_path, "train.steps=2", "train.eval_every=2"),
    ]
    assert train_cli.main(args) == 0
    line = next(text for text in capsys.readouterr().err.splitlines() if text.startswith("start-up: "))
    listed, total = re.fullmatch(r"start-up: (.*) \(total (\d+\.\d) s\)", line).groups()
    phases = re.findall(r"([a-z][a-z ()]+?) (\d+\.\d) s", listed)
    names = [name.strip(", ") for name, _ in phases]
    assert names == [
        "config",
        "backend",
        "imports",
        "data preparation",
        "model and optimizer init",
        "data loader",
        "checkpoint restore",
        "evaluation batches",
        "train step compile (rest)",
        "first step",
    ], line
    assert abs(sum(float(s) for _, s in phases) - float(total)) < 0.1 * len(phases)


def test_a_run_without_checkpoints_copies_nothing_from_the_device_to_look_for_one(tmp_path, monkeypatch):
    like = TrainState(
        step=np.int32(0),
        params={"w": jax.numpy.ones((4, 3))},
        opt_state={"m": jax.numpy.zeros(3)},
        rng=np.zeros(2, np.uint32),
    )
    monkeypatch.setattr(checkpoint.jax, "device_get", lambda tree: pytest.fail("the state was copied to the host"))
    checkpoints = Checkpoints(tmp_path, keep=1)
    assert checkpoints.restore_latest(like) is None
    checkpoints.close()
