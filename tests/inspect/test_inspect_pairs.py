"""Inspecting an encoder-decoder trained on pairs: the prompt is its source, the decoder starts from its start
token, and `inspect attention` draws the cross-attention over the source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from support import pairs_run
from mulm_jax.__main__ import main as cli
from mulm_jax.api import create_app
from mulm_jax.config import ServeConfig
from mulm_jax.infer import Engine, SamplingParams, load_model
from mulm_jax.inspect.trace import Tracer, greedy_target


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return pairs_run(tmp_path_factory.mktemp("inspect-pairs"))[1]


def test_the_tracer_reads_the_prompt_as_the_source_and_a_text_target_after_the_start_token(run):
    lm = load_model(run)
    tracer = Tracer(lm)
    ids, source = tracer.sequences("ab ij", "ij ab")
    assert source == lm.tokenizer.encode("ab ij") and ids == [lm.decoder_start] + lm.tokenizer.encode("ij ab")
    assert tracer.sequences("ab ij") == ([lm.decoder_start], lm.tokenizer.encode("ab ij"))
    trace = tracer.trace("ab ij", target="ij ab")
    assert trace.cross_attention_LxHxTxS.shape[2:] == (6, 5)
    np.testing.assert_allclose(trace.cross_attention_LxHxTxS.sum(-1), 1.0, rtol=1e-5)


def test_inspect_attention_draws_the_cross_attention_of_the_greedy_output(run, tmp_path, capsys):
    assert (
        cli(
            [
                "inspect",
                "attention",
                "--checkpoint",
                str(run),
                "--prompt",
                "ab ij",
                "--out",
                str(tmp_path),
                "--head",
                "1",
                "--json",
            ]
        )
        == 0
    )
    drawn = sorted(p.name for p in tmp_path.iterdir())
    assert drawn == [
        "attention_L0_H1.png",
        "attention_grid.png",
        "cross_attention_L0_H1.png",
        "cross_attention_grid.png",
    ]
    trace = json.loads(capsys.readouterr().out)
    lm = load_model(run)
    with Engine(lm, slots=1) as engine:
        output = engine.generate("ab ij", SamplingParams(max_tokens=32 - 6, temperature=0.0)).text
        assert greedy_target(engine, "ab ij") == output
    assert [t["text"] for t in trace["source_tokens"]] == list("ab ij")
    assert "".join(t["text"] for t in trace["tokens"]) == output  # the start token reads as nothing


def test_the_inspect_route_traces_a_pairs_models_greedy_output_with_its_cross_attention(run, tmp_path):
    lm = load_model(run)
    app = create_app(ServeConfig(state_dir=str(tmp_path / "state"), runs_root=str(tmp_path / "runs")))
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.ctx.models.serve("pairs", lm)
        body = client.post(
            "/v1/inspect", json={"model": "pairs", "prompt": "ab ij", "include": ["tokens", "attention"]}
        ).json()
        given = client.post("/v1/inspect", json={"model": "pairs", "prompt": "ab ij", "target": "ij ab"}).json()
    with Engine(lm, slots=1) as engine:
        output = greedy_target(engine, "ab ij")
    expected = Tracer(lm).trace("ab ij", target=output)
    assert [t["text"] for t in body["source_tokens"]] == list("ab ij")
    assert "".join(t["text"] for t in body["tokens"]) == output
    np.testing.assert_allclose(body["cross_attention"], expected.cross_attention_LxHxTxS, atol=1e-5)
    assert "".join(t["text"] for t in given["tokens"]) == "ij ab" and len(given["tokens"]) == 6  # the start token
