"""`python -m mulm_jax info`: parameter breakdown and memory figures; the data's tokens per epoch and epochs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mulm_jax.config import load_config
from mulm_jax.data import assemble
from mulm_jax.models.info import data_epochs, data_lines, describe


def run_info(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "mulm_jax", "info", *args], cwd=repo_root, capture_output=True, text=True, timeout=120
    )


def test_info_shows_about_one_gigabyte_for_the_mulm_target(repo_root):
    result = run_info(repo_root, "--config", "configs/mulm_1gb.yaml")
    assert result.returncode == 0, result.stderr
    assert "parameters: 246,187,008" in result.stdout
    assert "weights: 984.75 MB float32, 492.37 MB bfloat16" in result.stdout
    assert "grouped-query" in result.stdout
    assert "training: 10,000 steps x 32 x 1,024 = 327,680,000 tokens, ~2.4 epochs" in result.stdout


def test_info_json_with_overrides_reports_parts_and_kv_cache(repo_root):
    result = run_info(repo_root, "--config", "configs/llama_tiny.yaml", "--set", "model.num_kv_heads=1", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.splitlines()[-1])
    # multi-query: 2 (k, v) x 4 layers x 1 kv head x 32 dims x 4 bytes
    assert info["kv_cache_bytes_per_token"] == 2 * 4 * 1 * 32 * 4
    assert sum(info["parameters_by_part"].values()) == info["parameters"]
    assert info["parameters_by_part"]["head"] == 8000 * 256


@pytest.mark.parametrize(
    "name, parts",
    [
        ("shakespeare_char", {"embedding", "positional", "attention", "ffn", "norm"}),
        ("transformer_base", {"embedding", "attention", "cross_attention", "ffn", "norm"}),
    ],
)
def test_parameter_parts_present_match_the_architecture(repo_root, name, parts):
    info = describe(load_config(repo_root / "configs" / f"{name}.yaml").model)
    assert {part for part, n in info["parameters_by_part"].items() if n} == parts


def test_info_gives_an_assembled_data_sets_tokens_per_epoch_and_the_epochs_training_makes(mirror, repo_root, tmp_path):
    cfg = load_config(repo_root / "configs" / "shakespeare_char.yaml", [f"data.out_dir={tmp_path}"])
    T = cfg.train.seq_len or cfg.model.max_seq_len
    before = data_epochs(cfg)  # not assembled yet: estimated at a token a byte from the file's known size
    assert (before["exact"], before["dataset"], before["tokens_per_epoch"]) == (False, None, round(1_115_394 * 0.9))
    folder = assemble(cfg.data).path
    after = data_epochs(cfg)
    assert (after["exact"], after["dataset"], after["tokens_per_epoch"]) == (True, str(folder), 1_003_854)
    assert after["epochs"] == pytest.approx(cfg.train.steps * cfg.train.batch_size * T / 1_003_854)
    assert data_lines(cfg, after) == [
        f"data: 1,003,854 training tokens per epoch (assembled: {folder})",
        f"training: {cfg.train.steps:,} steps x {cfg.train.batch_size} x {T} = "
        f"{cfg.train.steps * cfg.train.batch_size * T:,} tokens, {after['epochs']:.2f} epochs",
    ]


def test_info_estimates_the_mulm_target_at_one_to_three_epochs_of_wikitext103(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MULM_CACHE", str(tmp_path / "cache"))  # nothing at hand: estimated, never downloaded
    cfg = load_config(repo_root / "configs" / "mulm_1gb.yaml", [f"data.out_dir={tmp_path}"])
    assert (cfg.data.sources, cfg.data.tokenizer, cfg.data.vocab_size) == (("wikitext103-raw",), "bpe", 32_000)
    assert cfg.model.vocab_size == 32_128 >= cfg.data.vocab_size
    epochs = data_epochs(cfg)
    assert (epochs["exact"], epochs["tokens_per_epoch"]) == (False, 540_520_000 // 4)
    assert 1 <= epochs["epochs"] <= 3
    assert data_lines(cfg, epochs)[0].startswith(
        "data: ~135,000,000 training tokens per epoch (estimated, not "
        "assembled: a training split of about 541 MB from wikitext103-raw"
    )
    assert not (tmp_path / "cache").exists()


def test_info_says_when_the_tokens_per_epoch_are_unknown_until_assembled(repo_root, tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"text": "some text"}\n')
    cfg = load_config(
        repo_root / "configs" / "shakespeare_char.yaml",
        [f"data.sources=[{tmp_path / 'docs.jsonl'}]", f"data.out_dir={tmp_path / 'out'}"],
    )
    epochs = data_epochs(cfg)
    assert (epochs["tokens_per_epoch"], epochs["epochs"]) == (None, None)
    assert data_lines(cfg, epochs)[0] == (
        "data: training tokens per epoch unknown until assembled (python -m mulm_jax data assemble --config ...)"
    )


def test_info_counts_a_pairs_data_set_in_examples_one_a_row(repo_root, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(f'{{"prompt": "Q: {i}+{i}? A:", "completion": " {2 * i}"}}\n' for i in range(3)))
    cfg = load_config(
        repo_root / "configs" / "shakespeare_char.yaml",
        [
            f"data.sources=[{pairs}]",
            "data.val_fraction=0",
            f"data.out_dir={tmp_path / 'out'}",
            "train.steps=6",
            "train.batch_size=2",
        ],
    )
    folder = assemble(cfg.data).path
    epochs = data_epochs(cfg)
    assert (epochs["examples_per_epoch"], epochs["epochs"]) == (3, 4.0)
    assert data_lines(cfg, epochs) == [
        f"data: 3 training examples per epoch (assembled: {folder})",
        "training: 6 steps x 2 examples = 12 examples, 4.00 epochs",
    ]
