"""The induction score logged at each evaluation: the best head's, equal to inspect.heads' measurement on the same
checkpoint (per-layer and scanned stacks), and drawn by `plot`; the sample prompt of text without newlines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from support import ROOT, tiny_run
from mulm_jax.__main__ import main
from mulm_jax.config import DataConfig, load_config
from mulm_jax.data import Tokenizer, assemble
from mulm_jax.infer.loading import load_model
from mulm_jax.inspect.heads import head_roles
from mulm_jax.inspect.trace import Tracer
from mulm_jax.runs import read_metrics
from mulm_jax.train.induction import SEEDS, best_head
from mulm_jax.train import loop
from mulm_jax.train.loop import train


def test_best_head_names_the_layer_and_head_of_the_highest_score():
    scores_LxH = np.array([[0.1, 0.2, 0.05], [0.7, 0.3, 0.69]], np.float32)
    assert best_head(scores_LxH) == {"val_induction": pytest.approx(0.7), "val_induction_head": "1.0"}


@pytest.mark.parametrize("scan", [False, True])
def test_the_logged_induction_score_is_the_tracers_on_the_same_checkpoint(tmp_path, scan):
    overrides = tiny_run(tmp_path, "train.steps=10", "train.eval_every=5", f"model.scan_layers={str(scan).lower()}")
    train(load_config(ROOT / "configs/shakespeare_char.yaml", overrides), tmp_path / "run", quiet=True)
    evals = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    assert all(0.0 <= r["val_induction"] <= 1.0 for r in evals)

    tracer = Tracer(load_model(tmp_path / "run"))  # the step-10 checkpoint, per layer
    scores_LxH = head_roles(tracer, np.zeros((2, 2, 1, 1), np.float32), seeds=SEEDS).induction_LxH
    layer, head = map(int, evals[-1]["val_induction_head"].split("."))
    assert evals[-1]["val_induction"] == pytest.approx(float(scores_LxH.max()), abs=1e-5)
    assert scores_LxH[layer, head] == pytest.approx(float(scores_LxH.max()), abs=1e-5)


def png_height(path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # the IHDR chunk's height


@pytest.mark.slow
def test_plot_draws_the_induction_score_as_a_panel_of_its_own_when_a_run_has_it(tmp_path):
    run = tmp_path / "run"
    train(load_config(ROOT / "configs/shakespeare_char.yaml", tiny_run(tmp_path, "train.steps=4")), run, quiet=True)
    rows = read_metrics(run)
    assert "val_induction" in rows[-1]
    older = shutil.copytree(run, tmp_path / "older")  # its rows as written before the induction score
    stripped = [{k: v for k, v in r.items() if not k.startswith("val_induction")} for r in rows]
    (older / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert main(["plot", str(run), "--out", str(tmp_path / "with.png")]) == 0
    assert main(["plot", str(older), "--out", str(tmp_path / "without.png")]) == 0
    assert main(["plot", str(older), str(run), "--out", str(tmp_path / "both.png")]) == 0
    without = png_height(tmp_path / "without.png")
    assert png_height(tmp_path / "with.png") > without + 300 and png_height(tmp_path / "both.png") > without + 300


@pytest.mark.slow
def test_a_text_data_set_without_newlines_samples_from_its_end_of_document_id(tmp_path):
    # generated recall text has no "\n" to start the evaluation's sample from (a run on it failed to start)
    folder = assemble(DataConfig(sources=("recall",), tokenizer="char", out_dir=str(tmp_path))).path
    tokenizer = Tokenizer.load(folder)
    assert loop._sample_prompt(folder, tokenizer) == ([tokenizer.eos_id], None)
