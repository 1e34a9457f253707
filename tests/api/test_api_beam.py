"""Beam search over HTTP (the real Engine): num_beams, length_penalty and early_stopping on both completions routes,
refused with the settings beam search does not take, and a beam completion with its usage, whole or streamed."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from support import loaded
from mulm_jax.api import create_app
from mulm_jax.config import ServeConfig


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-beam")
    app = create_app(ServeConfig(state_dir=str(root / "state"), runs_root=str(root / "runs"), slots=2))
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.ctx.models.serve("tiny", loaded(max_seq_len=64))
        yield c


def refused(response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error["message"]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 17}, "num_beams"),
        ({"num_beams": 2.5}, "num_beams"),
        ({"length_penalty": -0.1}, "length_penalty"),
        ({"length_penalty": 2.5}, "length_penalty"),
        ({"early_stopping": "yes"}, "early_stopping"),
        ({"num_beams": 2, "n": 2}, "n"),
        ({"num_beams": 2, "logprobs": 1}, "logprobs"),
        ({"num_beams": 2, "repetition_penalty": 1.2}, "repetition_penalty"),
        ({"num_beams": 2, "presence_penalty": 0.5}, "presence_penalty"),
        ({"num_beams": 2, "frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
def test_beam_settings_out_of_range_or_with_what_beam_search_does_not_take_are_refused(client, body, param):
    message = refused(client.post("/v1/completions", json={"model": "tiny", "prompt": "ab", **body}), param)
    assert param in message


def test_chat_refuses_logprobs_with_beams(client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "num_beams": 2, "logprobs": True}
    assert "not allowed with num_beams=2" in refused(client.post("/v1/chat/completions", json=body), "logprobs")


def test_a_beam_completion_is_the_best_hypothesis_with_its_usage_whole_or_streamed(client):
    engine = client.app.state.ctx.models.get("tiny").engine
    best = engine.beams.search(
        engine.params, engine.tokenize("hello"), num_beams=3, max_tokens=6, alpha=1.0
    ).hypotheses[0]
    body = {
        "model": "tiny",
        "prompt": "hello",
        "max_tokens": 6,
        "num_beams": 3,
        "length_penalty": 1.0,
        "temperature": 0.7,
    }  # beam search ignores temperature
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    (choice,) = answer.json()["choices"]
    assert (choice["text"], choice["finish_reason"]) == (engine.tokenizer.decode(best.token_ids), "length")
    assert answer.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}

    streamed = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[len("data: ") :]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert chunks[-1]["usage"] == answer.json()["usage"]


def test_a_chat_completion_searches_too(client):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "num_beams": 2,
        "early_stopping": False,
    }
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["completion_tokens"] == 4 and usage["total_tokens"] == usage["prompt_tokens"] + 4
