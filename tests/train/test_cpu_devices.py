"""A training run splits the CPU into devices (train.mesh.cpu_devices): one per core that the batch splits over,
a count that is asked for, the XLA flag's count where one is forced, and a state too large to copy to every device
split over fsdp instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, tiny_run, train_py, xla_flags
from mulm_jax import platform
from mulm_jax.config import ConfigError, MeshConfig, TrainConfig, load_config
from mulm_jax.errors import MulmError


@pytest.mark.parametrize(
    "requested, batch, accum, cores, expected",
    [
        (0, 12, 1, 2, 2),  # one device per core
        (0, 12, 1, 16, 12),  # no more devices than rows
        (0, 3, 1, 2, 1),  # 3 rows do not split over 2 devices
        (0, 16, 4, 2, 2),  # 16 rows = 2 devices x 4 accumulation steps x 2 rows
        (0, 12, 4, 2, 1),  # 12 rows do not split over 2 devices x 4 accumulation steps
        (0, 7, 2, 2, 1),  # nothing splits 7 rows over 2 accumulation steps: the run's own error says so
        (3, 12, 1, 2, 3),  # a requested count is taken as it is
    ],
)
def test_a_run_takes_one_device_per_core_that_its_batch_splits_over(requested, batch, accum, cores, expected):
    assert platform.training_cpu_devices(requested, batch, accum, cores=cores) == expected


def test_a_negative_device_count_is_refused_with_the_value():
    with pytest.raises(ConfigError, match=r"train.mesh.cpu_devices=-1 must be zero \(one per core\) or more"):
        TrainConfig(mesh=MeshConfig(cpu_devices=-1)).validate()


def test_once_the_backend_has_started_a_chosen_count_gives_way_and_a_requested_one_is_an_error():
    platform.backend()  # this process computes already
    assert platform.split_cpu(5, requested=False) is False
    with pytest.raises(MulmError, match=r"cpu_devices=5: this process's CPU backend has already started with 1"):
        platform.split_cpu(5, requested=True)


def devices_after_start(batch_size: int, cpu_devices: int, replica_bytes: int) -> dict:
    """In a fresh process: start_training's count, the devices the backend made, and the mesh make_mesh forms
    for a state of replica_bytes."""
    from mulm_jax.startup import start_training
    from mulm_jax.train.mesh import make_mesh

    import jax

    mesh_cfg = MeshConfig(cpu_devices=cpu_devices)
    chosen = start_training(TrainConfig(batch_size=batch_size, mesh=mesh_cfg))
    mesh = make_mesh(mesh_cfg, replica_bytes=replica_bytes)
    return {"chosen": chosen, "devices": jax.device_count(), "mesh": dict(mesh.shape)}


def in_fresh_process(call: str, forced: int | None = None) -> dict:
    flags = [f"--xla_force_host_platform_device_count={forced}"] if forced else []
    env = {**os.environ, "XLA_FLAGS": xla_flags(*flags), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT / "tests")}
    script = f"import json, test_cpu_devices as t; print(json.dumps(t.{call}))"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_a_requested_count_makes_that_many_devices_and_a_huge_state_is_split_over_them_not_copied():
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    small = in_fresh_process("devices_after_start(12, 3, 1 << 20)")
    assert small == {"chosen": 3, "devices": 3, "mesh": {"data": 3, "fsdp": 1}}
    huge = in_fresh_process(f"devices_after_start(12, 3, {host // 4})")  # 3 copies: 3/4 of the host's memory
    assert huge == {"chosen": 3, "devices": 3, "mesh": {"data": 1, "fsdp": 3}}


def test_a_device_count_forced_in_xla_flags_wins_over_the_chosen_one():
    assert in_fresh_process("devices_after_start(12, 0, 1 << 20)", forced=3)["devices"] == 3
    assert in_fresh_process("devices_after_start(12, 2, 1 << 20)", forced=3)["devices"] == 2  # asked for: taken


@pytest.mark.slow  # 15 s: train.py in a process of its own
def test_train_py_splits_the_cpu_as_the_config_asks(tmp_path):
    overrides = tiny_run(tmp_path, "train.steps=2", "train.eval_every=2", "train.batch_size=6")
    unforced = " ".join(f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f)  # the suite's 1
    env = {**os.environ, "XLA_FLAGS": unforced, "JAX_PLATFORMS": "cpu"}
    cfg = load_config(ROOT / "configs/shakespeare_char.yaml", overrides)
    chosen = platform.training_cpu_devices(0, cfg.train.batch_size, 1)
    for asked, devices in ((None, chosen), ("3", 3)):
        extra = [f"train.mesh.cpu_devices={asked}"] if asked else []
        out = train_py(tmp_path / f"r{asked}", [*overrides, *extra], env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"on a data {devices} x fsdp 1 mesh of {devices} device(s) in 1 process(es)" in out.stderr
