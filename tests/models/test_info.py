"""`python -m mulm_jax info`: parameter breakdown and memory figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mulm_jax.config import load_config
from mulm_jax.models.info import describe


def run_info(repo_root, *args):
    return subprocess.run([sys.executable, "-m", "mulm_jax", "info", *args], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)


def test_info_shows_about_one_gigabyte_for_the_mulm_target(repo_root):
    result = run_info(repo_root, "--config", "configs/mulm_1gb.yaml")
    assert result.returncode == 0, result.stderr
    assert "parameters: 246,187,008" in result.stdout
    assert "weights: 984.75 MB float32, 492.37 MB bfloat16" in result.stdout
    assert "grouped-query" in result.stdout


def test_info_json_with_overrides_reports_parts_and_kv_cache(repo_root):
    result = run_info(repo_root, "--config", "configs/llama_tiny.yaml", "--set", "model.num_kv_heads=1", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.splitlines()[-1])
    # multi-query: 2 (k, v) x 4 layers x 1 kv head x 32 dims x 4 bytes
    assert info["kv_cache_bytes_per_token"] == 2 * 4 * 1 * 32 * 4
    assert sum(info["parameters_by_part"].values()) == info["parameters"]
    assert info["parameters_by_part"]["head"] == 8000 * 256


@pytest.mark.parametrize("name, parts", [
    ("shakespeare_char", {"embedding", "positional", "attention", "ffn", "norm"}),
    ("transformer_base", {"embedding", "attention", "cross_attention", "ffn", "norm"}),
])
def test_parameter_parts_present_match_the_architecture(repo_root, name, parts):
    info = describe(load_config(repo_root / "configs" / f"{name}.yaml").model)
    assert {part for part, n in info["parameters_by_part"].items() if n} == parts
