"""Runs side by side from their folders alone: finding the runs under a root, the settings that differ, the curves
by step, tokens seen and wall time, the table, and GET /v1/runs and POST /v1/runs/compare (no model is loaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from support import StandInEngine
from mulm_jax.api import create_app
from mulm_jax.config import Config, ServeConfig, config_from_dict, dump_config
from mulm_jax.inspect.runs import config_diff, curves, read_run, runs_table
from mulm_jax.runs import config_path, find_runs, metrics_path


def write_run(folder: Path, overrides: list[str], rows: list[dict]) -> Path:
    """A run folder as train.py leaves one, without training: its config and metrics rows."""
    folder.mkdir(parents=True)
    config_path(folder).write_text(dump_config(config_from_dict({}, overrides)))
    metrics_path(folder).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


ROWS = [
    {"time": 100.0, "step": 10, "loss": 3.0, "tokens_per_sec": 900.0},
    {"time": 110.0, "step": 20, "loss": 2.5, "tokens_per_sec": 1100.0},
    {"time": 111.0, "step": 20, "val_loss": 2.6, "val_bpb": 3.7},
    {"time": 120.0, "step": 30, "loss": 2.2, "tokens_per_sec": 1000.0},
    {"time": 121.0, "step": 30, "val_loss": 2.4, "val_bpb": 3.4},
]
ROPE = ["model.positional=rope", "train.batch_size=4", "train.seq_len=32", "data.sources=[tinyshakespeare]"]
ALIBI = ["model.positional=alibi", "train.batch_size=4", "train.seq_len=32", "data.sources=[tinyshakespeare]"]


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "rope", ROPE, ROWS)
    write_run(root / "study" / "alibi", ALIBI, ROWS[:3])
    (root / "study" / "notes").mkdir()  # a folder that is no run
    (root / "rope" / "checkpoints" / "30").mkdir(parents=True)  # inside a run: not searched
    return root


def test_runs_are_found_under_a_root_in_path_order_and_not_inside_a_run(root):
    assert find_runs(root) == [root / "rope", root / "study" / "alibi"]
    assert find_runs(root / "rope") == [root / "rope"]
    assert find_runs(root, depth=1) == [root / "rope"]
    assert find_runs(root / "missing") == []


def test_config_diff_lists_exactly_the_settings_that_differ_in_order():
    rope, alibi = config_from_dict({}, ROPE), config_from_dict({}, ALIBI)
    assert config_diff([rope, alibi]) == [{"key": "model.positional", "values": ["rope", "alibi"]}]
    assert config_diff([rope, rope]) == []
    three = config_diff([rope, alibi, config_from_dict({}, ROPE + ["train.lr=0.01", "data.sources=[a.txt, b.txt]"])])
    assert three == [
        {"key": "model.positional", "values": ["rope", "alibi", "rope"]},
        {"key": "data.sources", "values": [["tinyshakespeare"], ["tinyshakespeare"], ["a.txt", "b.txt"]]},
        {"key": "train.lr", "values": [Config().train.lr, Config().train.lr, 0.01]},
    ]  # in the config's order of sections


def test_curves_count_tokens_seen_and_seconds_from_the_first_row(root):
    run = read_run(root / "rope")
    drawn = curves(run)
    assert [(r["step"], r["tokens"], r["seconds"], r["loss"]) for r in drawn["train"]] == [
        (10, 10 * 4 * 32, 0.0, 3.0),
        (20, 20 * 4 * 32, 10.0, 2.5),
        (30, 30 * 4 * 32, 20.0, 2.2),
    ]
    assert [(r["step"], r["val_bpb"], r["seconds"]) for r in drawn["evals"]] == [(20, 3.7, 11.0), (30, 3.4, 21.0)]
    assert [r["step"] for r in curves(run, max_points=2)["train"]] == [10, 30]  # every second row


def test_the_table_has_architecture_data_steps_and_tokens_seen(root):
    row = runs_table([read_run(root / "rope")])[0]
    model = config_from_dict({}, ROPE).model
    assert row["architecture"] == f"decoder {model.num_layers}x{model.d_model}" and row["positional"] == "rope"
    assert row["data"] == "tinyshakespeare (char)" and row["steps"] == 30 and row["tokens_seen"] == 30 * 4 * 32
    assert row["best_val_loss"] == 2.4 and row["best_val_step"] == 30 and row["tokens_per_sec"] == 1000.0


@pytest.fixture
def client(root, tmp_path):
    app = create_app(ServeConfig(state_dir=str(tmp_path / "state"), runs_root=str(root)), StandInEngine)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_get_runs_lists_every_run_under_the_root_with_its_summary(client, root):
    write_run(root / "fresh", ROPE, [])  # just started: no metrics rows yet
    (root / "broken").mkdir()
    config_path(root / "broken").write_text("model: [not a mapping\n")
    listed = {r["run"]: r for r in client.get("/v1/runs").json()["data"]}
    assert list(listed) == ["broken", "fresh", "rope", os.path.join("study", "alibi")]
    assert listed["rope"]["checkpoints"] == [30] and listed["rope"]["best_val_loss"] == 2.4
    assert listed["rope"]["served_as"] == [] and listed["study/alibi"]["steps"] == 20
    assert listed["fresh"]["steps"] == 0 and listed["fresh"]["params"] > 0
    assert "config.yaml" in listed["broken"]["error"] and "params" not in listed["broken"]


def test_compare_answers_the_table_the_differences_and_the_curves(client):
    answer = client.post("/v1/runs/compare", json={"runs": ["rope", "study/alibi"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["run"] for r in body["runs"]] == ["rope", "study/alibi"]
    assert body["config_diff"] == [{"key": "model.positional", "values": ["rope", "alibi"]}]
    assert [c["run"] for c in body["curves"]] == ["rope", "study/alibi"]
    assert [r["tokens"] for r in body["curves"][1]["train"]] == [1280, 2560]


@pytest.mark.parametrize(
    "runs, status, message",
    [
        (["rope"], 400, "runs"),
        (["rope", "rope", "rope", "rope", "rope"], 400, "runs"),
        (["rope", "study"], 404, "runs[1]='study' is not a run folder"),
        (["rope", "../../etc"], 403, "runs[1]"),
    ],
)
def test_compare_refuses_what_it_cannot_compare_naming_the_run(client, runs, status, message):
    answer = client.post("/v1/runs/compare", json={"runs": runs})
    assert answer.status_code == status and message in answer.json()["error"]["message"]


def test_one_prompt_through_runs_equals_each_runs_own_trace_and_names_what_differs():
    from support import loaded
    from mulm_jax.inspect.compare import compare_runs
    from mulm_jax.inspect.heads import head_roles
    from mulm_jax.inspect.trace import Tracer

    two, three = loaded(num_layers=2), loaded(seed=1, num_layers=3)
    result = compare_runs([("two", two), ("three", three)], "hello", layer=2, head=1, top_k=3)
    assert result["config_diff"] == [{"key": "model.num_layers", "values": [2, 3]}]
    for (name, model), run in zip([("two", two), ("three", three)], result["runs"]):
        tracer = Tracer(model)
        trace = tracer.trace("hello", top_k=3, lens=False)
        assert run["run"] == name and run["tokens"] == trace.pieces
        assert run["loss"] == pytest.approx(-trace.logprob_T[1:].mean(), rel=1e-6)
        assert [t["id"] for t in run["next"]] == trace.next_top_ids_N.tolist()
        roles = head_roles(tracer, trace.attention_LxHxTxT).rows()
        assert [sorted(r.items()) for r in run["heads"]] == [sorted(r.items()) for r in roles]
    assert result["runs"][0]["attention"] is None  # the 2-layer run has no layer 2
    three_trace = Tracer(three).trace("hello", top_k=3, lens=False)
    np.testing.assert_allclose(result["runs"][1]["attention"], three_trace.attention_LxHxTxT[2, 1], rtol=1e-6)
