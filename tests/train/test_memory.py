"""The training-memory plan (`info --train`) against XLA's own account of the compiled train step on the CPU, its
exact parts, the largest batch a card takes, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest

from mulm_jax.config import load_config
from mulm_jax.models.info import param_shapes
from mulm_jax.train import memory


def plan_and_xla(path, batch, seq_len, *overrides):
    config = load_config(path, [*overrides, f"train.batch_size={batch}", f"train.seq_len={seq_len}"])
    return memory.training_memory(config, batch, seq_len), memory.compiled_memory(config, batch, seq_len)


@pytest.mark.parametrize(
    "path, batch, seq_len",
    [
        ("configs/shakespeare_char.yaml", 12, 64),
        pytest.param("configs/llama_tiny.yaml", 4, 256, marks=pytest.mark.slow),
        pytest.param("configs/mulm_1gb.yaml", 1, 256, marks=pytest.mark.slow),  # scanned, remat, bfloat16
    ],
)
def test_plan_is_within_15_percent_of_the_compiled_step(repo_root, path, batch, seq_len):
    plan, xla = plan_and_xla(path, batch, seq_len)
    assert 0.85 <= plan.total / xla <= 1.15, (plan.as_dict(), xla)


def test_plan_counts_the_state_exactly_and_grows_with_the_batch():
    config = load_config("configs/shakespeare_char.yaml")
    params = sum(leaf.size for leaf in jax.tree.leaves(param_shapes(config.model)))
    plan = memory.training_memory(config, 12, 64)
    assert plan.parameters == plan.gradients == 4 * params
    assert 2 * 4 * params <= plan.optimizer_state <= 2 * 4 * params + 64  # adamw's mu and nu (and a step count)
    assert plan.compute_copy == 0 and plan.attention == "dense"
    bigger = memory.training_memory(config, 24, 64)
    assert bigger.activations == pytest.approx(2 * plan.activations, rel=1e-6)
    assert bigger.logits == pytest.approx(2 * plan.logits, rel=1e-6)
    assert bigger.parameters == plan.parameters


def test_a_gpu_plan_keeps_no_scores_where_cudnn_runs_and_remat_keeps_layer_inputs():
    config = load_config("configs/mulm_1gb.yaml")
    gpu = memory.training_memory(config, 8, 2048, backend="gpu")
    cpu = memory.training_memory(config, 8, 2048, backend="cpu")  # 2 GiB of scores a layer: blockwise
    assert (gpu.attention, cpu.attention) == ("cudnn", "blockwise")
    assert gpu.compute_copy == gpu.parameters // 2  # bfloat16 compute
    off = memory.training_memory(config, 8, 2048, remat=False, backend="gpu")
    assert off.activations > 4 * gpu.activations


def test_largest_batch_is_the_last_that_fits():
    config = load_config("configs/llama_tiny.yaml")
    budget = 8 * 10**9
    largest, none = memory.largest_batches(config, 256, [budget, 10**6], backend="gpu")
    assert largest > 1
    assert memory.training_memory(config, largest, 256, backend="gpu").total <= budget
    assert memory.training_memory(config, largest + 1, 256, backend="gpu").total > budget
    assert none == 0


def run_info(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "mulm_jax", "info", *args], cwd=repo_root, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_info_train_prints_the_plan_and_the_cards_it_fits(repo_root):
    result = run_info(
        repo_root,
        "--config",
        "configs/llama_tiny.yaml",
        "--train",
        "--batch",
        "4",
        "--seq-len",
        "128",
        "--fits",
        "8,24",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "training memory of one step at 4 x 128 tokens (remat off, planned for gpu):" in out
    for part in ("parameters", "optimizer state", "gradients", "activations", "logits", "total"):
        assert f"\n  {part}" in out
    assert "\n8 GB card, largest batch of 128 tokens: remat off: " in out
    assert "\n24 GB card" in out


def test_info_train_json_and_a_bad_card_size(repo_root):
    result = run_info(repo_root, "--config", "configs/shakespeare_char.yaml", "--train", "--json", "--batch", "2")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout.splitlines()[-1])["train_memory"]
    assert plan["batch"] == 2 and plan["seq_len"] == 64
    assert plan["total"] == sum(
        plan[k] for k in ("parameters", "optimizer_state", "gradients", "compute_copy", "activations", "logits")
    )
    bad = run_info(repo_root, "--config", "configs/shakespeare_char.yaml", "--fits", "eight")
    assert bad.returncode != 0
    assert "--fits 'eight': expected card sizes in GB, e.g. 8,12,16,24" in bad.stderr
