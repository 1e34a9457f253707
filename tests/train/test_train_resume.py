"""Runs as a user starts them: exact resume after SIGTERM and kill -9, and two processes joined by jax.distributed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from support import ROOT, free_port, tiny_run
from mulm_jax.infer import load_model
from mulm_jax.runs import read_metrics


def train_command(tmp_path: Path, workdir: Path, *extra: str) -> list[str]:
    overrides = tiny_run(
        tmp_path, "train.steps=300", "train.checkpoint_every=20", "train.eval_every=100", "train.log_every=10", *extra
    )
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs/shakespeare_char.yaml"),
        "--workdir",
        str(workdir),
        "--quiet",
        "--set",
        *overrides,
    ]


def wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, at_least: int) -> None:
    """Until a checkpoint at step `at_least` or later is saved, however long a loaded machine takes to get there (no
    deadline: the run ends by itself, and a run that ends first fails the test with its log)."""
    while not any(int(p.name) >= at_least for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()):
        assert proc.poll() is None, f"the run ended before its checkpoint at step {at_least}: {log_of(proc)}"
        time.sleep(0.02)


def start_training(tmp_path: Path, workdir: Path, name: str) -> subprocess.Popen:
    """train.py in its own process, its output in NAME.log (a pipe nobody reads would stop it once full)."""
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen(train_command(tmp_path, workdir), stdout=log, stderr=subprocess.STDOUT, text=True)


def log_of(proc: subprocess.Popen) -> str:
    return Path(proc.stdout.name).read_text()[-3000:]


def train_losses(workdir: Path) -> dict[int, float]:
    rows = [r for r in read_metrics(workdir) if "loss" in r]
    assert len({r["step"] for r in rows}) == len(rows), "a step was logged twice"
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow  # four training processes, about a minute: `make test-slow`
def test_interrupted_runs_resume_to_the_same_losses_as_an_uninterrupted_one(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(train_command(tmp_path, straight), check=True, capture_output=True, timeout=900)

    resumed = tmp_path / "resumed"
    # 1) SIGTERM: the run saves a checkpoint where it stands and exits cleanly.
    proc = start_training(tmp_path, resumed, "stopped")
    wait_for_checkpoint(resumed, proc, 20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 0, log_of(proc)
    stopped_at = max(train_losses(resumed))
    assert (resumed / "checkpoints" / str(stopped_at)).is_dir()
    # 2) kill -9: nothing is saved; the restart goes back to the newest checkpoint.
    proc = start_training(tmp_path, resumed, "killed")
    wait_for_checkpoint(resumed, proc, stopped_at + 40)
    proc.kill()
    assert proc.wait(timeout=600) == -signal.SIGKILL
    done = subprocess.run(train_command(tmp_path, resumed), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "resumed from step" in done.stderr

    expected, got = train_losses(straight), train_losses(resumed)
    assert set(expected) <= set(got)  # none lost (the stop adds its own row at the step it stopped)
    np.testing.assert_allclose([got[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)], atol=1e-4)
    val = lambda d: [r["val_loss"] for r in read_metrics(d) if "val_loss" in r]  # noqa: E731
    np.testing.assert_allclose(val(resumed), val(straight), atol=1e-4)


WORKER = """
import hashlib, json, sys
from mulm_jax.train import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax, numpy as np
from pathlib import Path
from mulm_jax.config import load_config
from mulm_jax.train.loop import train
from support import tiny_run
cfg = load_config({config!r}, tiny_run(Path({tmp!r}), "train.steps=6", "train.eval_every=6",
                                       "train.checkpoint_every=3", "train.log_every=3", "train.mesh.fsdp={fsdp}"))
result = train(cfg, {workdir!r}, quiet=True)
digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(result.params))).hexdigest()
print(json.dumps({{"process": jax.process_index(), "devices": jax.device_count(), "step": result.step,
                  "params": digest, "val_loss": result.last_eval["val_loss"], "val_bpb": result.last_eval["val_bpb"]}}))
"""


@pytest.mark.slow  # two jax.distributed processes, about 30 s each: `make test-slow`
@pytest.mark.parametrize("fsdp", [1, 2])
def test_two_processes_train_together_and_end_with_identical_parameters(tmp_path, fsdp):
    tiny_run(tmp_path)  # writes the corpus
    script = WORKER.format(
        config=str(ROOT / "configs/shakespeare_char.yaml"), tmp=str(tmp_path), workdir=str(tmp_path / "run"), fsdp=fsdp
    )
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, address, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT / "tests",
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["devices"] == 2 and r["step"] == 6 for r in results)
    assert results[0]["params"] == results[1]["params"]
    assert results[0]["val_loss"] == results[1]["val_loss"]
    # bits per byte over the bytes of both processes' evaluation batches (the corpus is ASCII: a byte a token)
    evaluation = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r][-1]
    assert results[0]["val_bpb"] == results[1]["val_bpb"] == evaluation["val_bpb"]
    assert evaluation["val_bpb"] == pytest.approx(evaluation["val_loss"] / math.log(2), rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r] == [3, 6]  # process 0 alone logs
    if fsdp == 2:  # each process saved its half of the parameters: one device reads them whole ...
        params = load_model(tmp_path / "run").params
        digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(params))).hexdigest()
        assert digest == results[0]["params"]
        # ... and the run goes on there, on another mesh, from its last checkpoint
        more = subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "--config",
                str(ROOT / "configs/shakespeare_char.yaml"),
                "--workdir",
                str(tmp_path / "run"),
                "--quiet",
                "--set",
                *tiny_run(
                    tmp_path, "train.steps=9", "train.eval_every=6", "train.checkpoint_every=3", "train.log_every=3"
                ),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert more.returncode == 0, more.stderr[-3000:]
        assert (
            "resumed from step 6" in more.stderr
            and "train.mesh: MeshConfig(data=0, fsdp=2, cpu_devices=0) -> " in more.stderr
        )
        assert [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r] == [3, 6, 9]
