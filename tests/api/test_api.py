"""HTTP API in-process (starlette's TestClient): completions and chat, streaming, validation errors, auth,
rate limits, queue bound, tokens and embeddings, metrics, OpenAPI, extra routes and path confinement.

The models are served by support.StandInEngine, which compiles nothing and whose tokens and log-probabilities are
worked out by hand: greedy, each token is the ALPHABET's next character ("hello" goes on "pqrst"), each with
log-probability -ln 2. A few tests serve the same model with the real Engine, end to end."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import re
import threading
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from starlette.testclient import TestClient

from support import ALPHABET, LN2, StandInEngine, StandInRequest, loaded, wait_for
from mulm_jax.api import cli, create_app
from mulm_jax.api.errors import ApiError
from mulm_jax.api.ratelimit import RateLimiter
from mulm_jax.config import ServeConfig
from mulm_jax.config_schema import within
from mulm_jax.api.routes.completions import MAX_PROMPTS
from mulm_jax.infer import Engine, InferenceError, SamplingError, SamplingParams
from mulm_jax.infer.chat import JinjaChatTemplate
from mulm_jax.infer.sampling import LIMITS

KEY = "sk-test-secret-0123456789"


def make_client(tmp_path, *, model=None, make_engine=StandInEngine, **settings) -> TestClient:
    """An app serving a tiny random model as "tiny" (context 64, or 16 when the test needs no more), with the
    stand-in engine unless `make_engine` says otherwise."""
    defaults = dict(state_dir=str(tmp_path / "state"), runs_root=str(tmp_path / "runs"), slots=2)
    app = create_app(ServeConfig(**{**defaults, **settings}), make_engine)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    app.state.ctx.models.serve("tiny", model or loaded(max_seq_len=64))
    return client


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = make_client(tmp_path_factory.mktemp("api"))
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The same model served by the real Engine (compiled)."""
    c = make_client(tmp_path_factory.mktemp("api-real"), make_engine=Engine)
    yield c
    c.__exit__(None, None, None)


def sse_events(response) -> list:
    """The `data:` payloads of a Server-Sent Events body, JSON-decoded except `[DONE]`."""
    out = []
    for block in response.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_error(response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# ---- completions ---------------------------------------------------------------------------------------


def test_completion_has_openai_shape_and_usage(client):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"] == [{"index": 0, "text": "pqrst", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert body["id"].startswith("cmpl-") and body["system_fingerprint"] is None


def test_several_prompts_and_n_give_one_choice_each_reproducible_by_seed(client):
    ask = {"model": "tiny", "prompt": ["abc", "xyz"], "max_tokens": 6, "n": 2, "seed": 7, "temperature": 1.0}
    first, again = (client.post("/v1/completions", json=ask).json() for _ in range(2))
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert texts == [c["text"] for c in again["choices"]]
    # each prompt's samples, with seeds 7 and 8: the stand-in steps 1 + seed % 4 characters, wrapping after "z"
    assert texts == ["gkosw\n", "defghi", ",bfjnr", "\n !,.:"]
    assert first["usage"] == {"prompt_tokens": 6, "completion_tokens": 24, "total_tokens": 30}


def test_token_id_prompts_equal_text_prompts(client):
    ids = client.post("/v1/tokenize", json={"model": "tiny", "prompt": "hello"}).json()["tokens"]
    assert ids == [ALPHABET.index(c) for c in "hello"] == [13, 10, 17, 17, 20]
    ask = {"model": "tiny", "max_tokens": 6, "temperature": 0}
    by_text = client.post("/v1/completions", json={**ask, "prompt": "hello"}).json()["choices"][0]["text"]
    by_ids = client.post("/v1/completions", json={**ask, "prompt": ids}).json()["choices"][0]["text"]
    assert by_text == by_ids == "pqrstu"


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_text_before_it_and_its_tokens_count(client, stream):
    ask = {
        "model": "tiny",
        "prompt": "ab",
        "max_tokens": 10,
        "temperature": 0,
        "stop": ["zz", "fg"],
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }
    r = client.post("/v1/completions", json=ask)
    if stream:
        *chunks, last, done = sse_events(r)
        assert done == "[DONE]"
        text, usage = "".join(c["choices"][0]["text"] for c in chunks), last["usage"]
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        (choice,), usage = r.json()["choices"], r.json()["usage"]
        text, finish = choice["text"], choice["finish_reason"]
    assert (text, finish) == ("cde", "stop")  # "cdefg": "f" is held back until "fg" is complete
    assert usage == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


@pytest.mark.parametrize(
    "route,ask",
    [
        ("/v1/completions", {"prompt": "the quick"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi there"}]}),
    ],
)
def test_the_real_engine_streams_the_text_of_its_whole_response_for_greedy(real, route, ask):
    ask = {"model": "tiny", "max_tokens": 12, "temperature": 0, **ask}
    whole = real.post(route, json=ask).json()["choices"][0]
    r = real.post(route, json={**ask, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]["usage"]
    if route == "/v1/chat/completions":
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert streamed == whole["message"]["content"]
    else:
        streamed = "".join(c["choices"][0]["text"] for c in chunks)
        assert streamed == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"] == "length"
    assert usage["completion_tokens"] == 12


@pytest.mark.parametrize(
    "route,ask,prompt,text",
    [
        ("/v1/completions", {"prompt": "the quick"}, "the quick", "lmnopqrstuvw"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi there"}]},
            "user: hi there\nassistant:",
            "abcdefghijkl",
        ),
    ],
)
def test_a_stream_is_chunks_of_the_text_then_the_finish_then_usage_then_done(client, route, ask, prompt, text):
    ask = {
        "model": "tiny",
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **ask,
    }
    r = client.post(route, json=ask)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks, last = events[:-2], events[-2]
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 12,
        "total_tokens": len(prompt) + 12,
    }
    assert len({(c["id"], c["created"]) for c in events[:-1]}) == 1 and all(c["model"] == "tiny" for c in chunks)
    *tokens, end = chunks
    if route == "/v1/chat/completions":
        first, *tokens = tokens
        assert first["choices"] == [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ]
        assert end["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
        assert "".join(c["choices"][0]["delta"]["content"] for c in tokens) == text
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    else:
        assert end["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]
        assert "".join(c["choices"][0]["text"] for c in tokens) == text
        assert {c["object"] for c in chunks} == {"text_completion"}
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)


def test_tokens_pending_together_go_out_in_one_chunk_that_the_openai_client_reassembles(client, monkeypatch):
    import asyncio

    import openai

    async def all_at_once(request):  # a reader that fell behind: every token is pending at its first wake-up
        while not request.done:
            await asyncio.sleep(0.005)
        yield list(request)  # done: iterating gives every event, then stops

    ask = {"model": "tiny", "prompt": "the quick", "max_tokens": 12, "temperature": 0, "logprobs": 2}
    whole = client.post("/v1/completions", json=ask).json()["choices"][0]
    monkeypatch.setattr(StandInRequest, "batches", all_at_once)
    events = sse_events(client.post("/v1/completions", json={**ask, "stream": True}))
    assert [len(e["choices"][0]["logprobs"]["tokens"]) for e in events[:-2]] == [12]
    assert whole["text"] == "lmnopqrstuvw" and whole["logprobs"]["text_offset"] == list(range(12))
    api = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client)
    chunks = [c.choices[0] for c in api.completions.create(**ask, stream=True)]
    assert "".join(c.text for c in chunks) == whole["text"]
    assert chunks[0].logprobs.tokens == whole["logprobs"]["tokens"]
    assert chunks[0].logprobs.text_offset == whole["logprobs"]["text_offset"]
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0}
    reply = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
    deltas = [c.choices[0].delta.content or "" for c in api.chat.completions.create(**chat, stream=True)]
    assert "".join(deltas) == reply == "abcdefghijkl" and len([d for d in deltas if d]) == 1


def test_chat_uses_the_template_and_its_stop_strings(client):
    served = client.app.state.ctx.models.get("tiny")
    ask = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "max_tokens": 4,
        "temperature": 0,
    }
    body = client.post("/v1/chat/completions", json=ask).json()
    prompt = served.chat.render([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert prompt == "system: be brief\nuser: hi\nassistant:"
    assert body["usage"] == {"prompt_tokens": 36, "completion_tokens": 4, "total_tokens": 40}  # a token a character
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "abcd"}, "logprobs": None, "finish_reason": "length"}
    ]


def test_a_runs_own_chat_template_renders_the_prompt_and_its_stop_strings_end_the_reply(client, tmp_path):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompt = "system! be brief\n\nuser! hi\n\nreply:"
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    full = client.app.state.ctx.models.get("tiny").engine.generate(prompt, greedy).text
    stop = full[4:6]
    assert (full, stop) == ("abcdefghijkl", "ef")
    run = tmp_path / "run"
    run.mkdir()
    (run / "chat_template.json").write_text(
        json.dumps({"message": "{role}! {content}\n\n", "generation_prompt": "reply:", "stop": [stop]})
    )
    custom = make_client(tmp_path, model=dataclasses.replace(loaded(max_seq_len=64), run_dir=run))
    try:
        body = custom.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}
        ).json()
        (run / "chat_template.json").write_text(json.dumps({"message": "{role}: {content}", "stops": []}))
        with pytest.raises(ApiError, match="chat_template.json: not a chat template \\(unknown keys \\['stops'\\]"):
            custom.app.state.ctx.models.serve("bad", dataclasses.replace(loaded(), run_dir=run))
    finally:
        custom.__exit__(None, None, None)
    assert body["usage"]["prompt_tokens"] == len(prompt)  # one character a token
    assert body["choices"][0]["message"]["content"] == full[: full.find(stop)] == "abcd"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 6  # "abcdef": the stop string's tokens were generated


def test_logprobs_in_both_formats_carry_the_engines_numbers(client):
    ask = {"model": "tiny", "prompt": "hello", "max_tokens": 3, "temperature": 0, "logprobs": 2}
    lp = client.post("/v1/completions", json=ask).json()["choices"][0]["logprobs"]
    # after each character c the stand-in gives c + 1 probability 1/2 and c + 2 probability 1/4
    assert lp == {
        "tokens": ["p", "q", "r"],
        "token_logprobs": [-LN2] * 3,
        "top_logprobs": [{"p": -LN2, "q": -2 * LN2}, {"q": -LN2, "r": -2 * LN2}, {"r": -LN2, "s": -2 * LN2}],
        "text_offset": [0, 1, 2],
    }
    sampled = client.post("/v1/completions", json={**ask, "temperature": 1, "seed": 2}).json()["choices"][0]
    assert sampled["text"] == "rux" and sampled["logprobs"]["token_logprobs"] == [-3 * LN2] * 3  # 3 steps of 3
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 3,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        },
    ).json()["choices"][0]["logprobs"]["content"]

    def entry(text, logprob):
        return {"token": text, "logprob": logprob, "bytes": [ord(text)]}

    assert chat == [
        {**entry(c, -LN2), "top_logprobs": [entry(c, -LN2), entry(d, -2 * LN2)]} for c, d in ("ab", "bc", "cd")
    ]


# ---- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,status,param,code",
    [
        ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature", "invalid_value"),
        ({"model": "tiny", "prompt": "x", "top_p": 1.5}, 400, "top_p", "invalid_value"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
        ({"model": "tiny", "prompt": "x", "n": True}, 400, "n", "invalid_value"),
        ({"model": "tiny", "prompt": 5}, 400, "prompt", "invalid_value"),
        ({"model": "tiny", "prompt": [99]}, 400, "prompt", "invalid_value"),  # outside the vocabulary
        ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
        ({"model": "tiny", "prompt": "x", "echo": True}, 400, "echo", "unknown_field"),
        ({"prompt": "x"}, 400, "model", "missing_field"),
        ({"model": "nope", "prompt": "x"}, 404, "model", "model_not_found"),
        ({"model": "tiny", "prompt": "x" * 64}, 400, "prompt", "context_length_exceeded"),
        ({"model": "tiny", "prompt": "x" * 10, "max_tokens": 55}, 400, "max_tokens", "context_length_exceeded"),
        ({"model": "tiny", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", None),
    ],
)
def test_invalid_completion_requests_name_the_field(client, body, status, param, code):
    assert_error(client.post("/v1/completions", json=body), status, param, code)


def edges(limits: dict) -> tuple[list, list]:
    """The values a LIMITS entry allows at its edges, and those just past them."""
    step = 1 if all(isinstance(bound, int) for bound in limits.values()) else 0.01
    inside, outside = [], []
    for op, bound in limits.items():
        sign = -1 if op in ("ge", "gt") else 1
        inside.append(bound if op in ("ge", "le") else bound - sign * (step if step == 1 else 1e-6))
        outside.append(bound + sign * step if op in ("ge", "le") else bound)
    return inside, outside


@pytest.mark.parametrize("field", sorted(LIMITS))
def test_the_engine_and_the_api_refuse_the_same_sampling_values_naming_the_field(client, field):
    inside, outside = edges(LIMITS[field])
    if field == "seed":  # the API leaves room for seed + i, sample i's seed
        inside = [seed for seed in inside if seed < LIMITS["seed"]["lt"] - MAX_PROMPTS]
    for value in inside:
        SamplingParams(**{field: value}).validate(max_logprobs=5)
        answer = client.post("/v1/completions", json={"model": "tiny", "prompt": "ab", "max_tokens": 1, field: value})
        assert answer.status_code == 200, (value, answer.text)
    for value in outside:
        with pytest.raises(SamplingError, match=f"^{field}="):
            SamplingParams(**{field: value}).validate(max_logprobs=5)
        answer = client.post("/v1/completions", json={"model": "tiny", "prompt": "ab", "max_tokens": 1, field: value})
        assert field in assert_error(answer, 400, field, "invalid_value")["message"]


def test_the_openapi_document_states_the_engines_sampling_limits(client):
    keywords = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for field, limits in LIMITS.items():
            if field == "seed":
                continue  # narrower (see above)
            stated, null = body["properties"][field]["anyOf"]  # optional: null is taken as absent
            assert {op: stated[keyword] for op, keyword in keywords.items() if keyword in stated} == limits, field


def test_the_labs_sampling_fields_offer_the_engines_ranges():
    """The lab's number fields (which explorer.js holds its settings to) end where the server's ranges end."""
    page = (Path(__file__).parents[2] / "mulm_jax" / "api" / "lab" / "index.html").read_text()
    fields = {
        "temperature": ["pg-temperature", "sx-temperature-n"],
        "top_p": ["pg-top-p", "sx-top-p-n"],
        "min_p": ["pg-min-p", "sx-min-p-n"],
        "repetition_penalty": ["pg-repetition", "sx-repetition-n"],
        "top_k": ["pg-top-k", "sx-top-k-n"],
        "max_tokens": ["pg-max-tokens"],
        "seed": ["pg-seed"],
    }
    for field, ids in fields.items():
        lower = {op: bound for op, bound in LIMITS[field].items() if op in ("ge", "gt")}
        high = next((bound for op, bound in LIMITS[field].items() if op == "le"), None)
        for id_ in ids:
            attributes = dict(re.findall(r'(\w+)="([^"]*)"', re.search(f'<input id="{id_}"[^>]*>', page).group()))
            assert attributes["type"] == "number" and within(float(attributes["min"]), lower), id_  # > 0: 0 refused
            assert (float(attributes["max"]) if "max" in attributes else None) == high, id_


@pytest.mark.parametrize(
    "messages,param",
    [
        ([], "messages"),
        ([{"role": "wizard", "content": "x"}], "messages[0]"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "messages[0].content"),
    ],
)
def test_invalid_chat_messages_name_the_message(client, messages, param):
    assert_error(client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages}), 400, param)


@pytest.mark.parametrize(
    "source,needle",
    [
        ("{{ raise_exception('only user turns, please') }}", "only user turns, please"),
        ("{{ messages | length / 0 }}", "ZeroDivisionError"),
    ],
)
def test_a_chat_template_that_raises_is_a_400_naming_its_error(client, monkeypatch, source, needle):
    monkeypatch.setattr(client.app.state.ctx.models.get("tiny"), "chat", JinjaChatTemplate(source, {}))
    ask = {"model": "tiny", "messages": [{"role": "system", "content": "be brief"}], "max_tokens": 2}
    error = assert_error(client.post("/v1/chat/completions", json=ask), 400, "messages", "chat_template_error")
    assert needle in error["message"] and "chat template" in error["message"]


def test_malformed_json_and_non_objects_are_400(client):
    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/completions", content=b'{"model": ', headers=headers), 400, code="invalid_json")
    assert_error(client.post("/v1/completions", content=b"[1, 2]", headers=headers), 400, code="invalid_json")


def test_a_body_over_the_limit_is_413(tmp_path):
    small = make_client(tmp_path, max_body_bytes=200, model=loaded())
    try:
        assert_error(
            small.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 300}), 413, code="body_too_large"
        )
        assert small.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        small.__exit__(None, None, None)


def test_a_full_waiting_queue_answers_429_instead_of_growing(tmp_path):
    full = make_client(tmp_path, max_queue=0, model=loaded())
    try:
        r = full.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 4})
        assert_error(r, 429, code="queue_full")
        assert r.headers["retry-after"] == "1"
    finally:
        full.__exit__(None, None, None)


def test_generations_cancelled_by_a_stopping_server_answer_503(tmp_path):
    stopping = make_client(tmp_path, model=loaded())
    engine = stopping.app.state.ctx.models.get("tiny").engine
    engine.stepping.clear()  # no step runs until the engine is told to stop
    answers = {}

    def ask(stream: bool) -> None:
        answers[stream] = stopping.post(
            "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 8, "stream": stream}
        )

    asking = [threading.Thread(target=ask, args=(stream,)) for stream in (False, True)]
    try:
        for thread in asking:
            thread.start()
        wait_for(lambda: (s := engine.stats()).active + s.waiting == 2, "both requests to reach the engine", 60)
        engine.stop()
        for thread in asking:
            thread.join(60)
    finally:
        stopping.__exit__(None, None, None)
    assert "cancelled because the server is stopping" in assert_error(answers[False], 503, code="cancelled")["message"]
    events = sse_events(answers[True])
    assert events[-1]["error"]["code"] == "cancelled" and "[DONE]" not in events


# ---- auth and rate limits ------------------------------------------------------------------------------


def test_api_keys_guard_every_route_but_the_probes_and_are_never_logged(tmp_path, caplog):
    guarded = make_client(tmp_path, api_keys=(KEY, "other-key"), model=loaded())
    ask = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    try:
        with caplog.at_level(logging.INFO, logger="mulm_jax.api.access"):
            assert guarded.get("/healthz").status_code == 200
            assert guarded.get("/readyz").status_code == 200
            assert_error(guarded.post("/v1/completions", json=ask), 401, code="invalid_api_key")
            assert_error(guarded.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
            assert_error(guarded.get("/metrics", headers={"Authorization": KEY}), 401)  # no scheme
            ok = guarded.post("/v1/completions", json=ask, headers={"Authorization": f"Bearer {KEY}"})
            assert ok.status_code == 200
        assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
        assert any('"key": "key:' in r.getMessage() for r in caplog.records)
        metrics = guarded.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert 'mulm_http_requests_total{route="/v1/completions",method="POST",status="401"} 1' in metrics
    finally:
        guarded.__exit__(None, None, None)


def test_serve_takes_keys_from_its_flags_the_environment_and_a_file_and_int8_from_its_flag(
    tmp_path, monkeypatch, capsys
):
    def settings(*flags: str) -> ServeConfig:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.settings_from_args(parser.parse_args(flags))

    keys_file = tmp_path / "keys"
    keys_file.write_text("# the operators' key\nsk-from-file-0123\n\n")
    monkeypatch.setenv("MULM_API_KEYS", "sk-env-one-0123, sk-env-two-0123,")
    given = settings(
        "--api-key",
        "sk-flag-0123",
        "--api-keys-file",
        str(keys_file),
        "--int8",
        "--state-dir",
        str(tmp_path / "s"),
        "--runs-root",
        str(tmp_path / "runs"),
        "--slots",
        "1",
    )
    assert given.api_keys == ("sk-flag-0123", "sk-env-one-0123", "sk-env-two-0123") and given.int8
    assert not settings().int8
    with TestClient(create_app(given, StandInEngine), raise_server_exceptions=False) as c:
        served = c.app.state.ctx.models.serve("tiny", loaded())
        for key in ("sk-flag-0123", "sk-env-one-0123", "sk-env-two-0123", "sk-from-file-0123"):
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200, key
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer # the operators' key"}), 401)
    assert served.engine.int8 and served.engine.slots == 1  # the settings reach the engine
    assert cli.main(["--api-keys-file", str(tmp_path / "missing")]) == 2
    assert f"error: --api-keys-file {str(tmp_path / 'missing')!r} does not exist" in capsys.readouterr().err


def test_token_bucket_refuses_over_the_limit_and_refills_with_time():
    now = [0.0]
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=30, clock=lambda: now[0])
    limiter.admit_request("a")
    limiter.admit_request("a")
    with pytest.raises(Exception) as refused:
        limiter.admit_request("a")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "30"
    limiter.admit_request("b")  # each caller has its own bucket
    now[0] = 30.0  # half a minute refills one request
    limiter.admit_request("a")
    limiter.charge_tokens("a", 45)  # over the limit: the bucket goes negative
    with pytest.raises(Exception) as refused:
        limiter.admit_generation("a")
    assert refused.value.headers["Retry-After"] == "32"  # back above zero after 31 s of refill (15.5 tokens)
    now[0] = 62.0
    limiter.admit_generation("a")


def test_rate_limits_answer_429_with_retry_after(tmp_path):
    limited = make_client(tmp_path, requests_per_minute=3, tokens_per_minute=8, model=loaded())
    ask = {"model": "tiny", "prompt": "x", "max_tokens": 10}
    try:
        assert limited.post("/v1/completions", json=ask).status_code == 200  # 10 tokens: the bucket is spent
        r = limited.post("/v1/completions", json=ask)
        assert_error(r, 429, code="tokens_per_minute")
        assert int(r.headers["retry-after"]) >= 1
        assert limited.get("/v1/models").status_code == 200
        r = limited.get("/v1/models")
        assert_error(r, 429, code="requests_per_minute")
        assert limited.get("/healthz").status_code == 200  # probes are not limited
    finally:
        limited.__exit__(None, None, None)


# ---- tokens, embeddings, models ------------------------------------------------------------------------


def test_tokenize_and_detokenize_round_trip(client):
    ids = client.post("/v1/tokenize", json={"model": "tiny", "prompt": "hello, world"}).json()
    assert ids["count"] == 12 and ids["max_model_len"] == 64
    text = client.post("/v1/detokenize", json={"model": "tiny", "tokens": ids["tokens"]}).json()["prompt"]
    assert text == "hello, world"
    assert_error(client.post("/v1/detokenize", json={"model": "tiny", "tokens": [1, 99]}), 400, "tokens")


def test_embeddings_are_mean_pooled_final_hidden_states(client):
    served = client.app.state.ctx.models.get("tiny")
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": ["hello", "a longer input text"]}).json()
    assert [d["index"] for d in r["data"]] == [0, 1] and r["usage"]["prompt_tokens"] == 5 + 19
    hidden = jax.jit(lambda ids: served.loaded.model.apply({"params": served.loaded.params}, ids, method="hidden")[0])
    for text, item in zip(["hello", "a longer input text"], r["data"]):
        ids = jnp.asarray([served.loaded.tokenizer.encode(text)])
        chex.assert_shape(np.asarray(item["embedding"]), (16,))
        np.testing.assert_allclose(item["embedding"], np.asarray(hidden(ids)[0]).mean(0), atol=1e-5)


def test_embeddings_in_base64_are_the_little_endian_float32_bytes(client):
    ask = {"model": "tiny", "input": ["hello", "a longer input text"]}
    floats = client.post("/v1/embeddings", json=ask).json()["data"]
    packed = client.post("/v1/embeddings", json={**ask, "encoding_format": "base64"}).json()["data"]
    for f, b in zip(floats, packed):
        vector = np.frombuffer(base64.b64decode(b["embedding"]), "<f4")
        np.testing.assert_array_equal(vector, np.asarray(f["embedding"], np.float32))
    assert_error(
        client.post("/v1/embeddings", json={**ask, "encoding_format": "int8"}), 400, "encoding_format", "invalid_value"
    )


def test_models_are_listed_and_run_folders_are_confined_to_the_runs_root(client, tmp_path):
    listed = client.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["tiny"] and listed["data"][0]["context_length"] == 64
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(client.get("/v1/models/nope"), 404, "model")
    for outside in ("../elsewhere", "/etc", str(tmp_path)):
        assert_error(client.post("/v1/models", json={"run_dir": outside}), 403, "run_dir", "path_not_allowed")
    assert_error(client.post("/v1/models", json={"run_dir": "missing"}), 400, "run_dir", "invalid_run")
    assert_error(client.post("/v1/models", json={"run_dir": "missing", "id": "tiny"}), 409, "id", "model_exists")


def test_models_loading_at_start_up_are_listed_with_their_state_and_answer_503(tmp_path, monkeypatch):
    read, compiled = threading.Event(), threading.Event()  # hold the models in loading, then in compiling

    def load_model(run_dir, step=None):
        read.wait(60)
        if run_dir.endswith("second"):
            raise InferenceError(f"{run_dir!r} is not a run folder")
        return loaded()

    monkeypatch.setattr("mulm_jax.api.registry.load_model", load_model)
    monkeypatch.setattr(StandInEngine, "warmup", lambda engine: compiled.wait(60))
    settings = ServeConfig(
        state_dir=str(tmp_path / "state"),
        runs_root=str(tmp_path / "runs"),
        slots=1,
        checkpoints=("first=runs/first", "second=runs/second"),
    )
    ask = {"model": "first", "prompt": "x", "max_tokens": 2}
    with TestClient(create_app(settings, StandInEngine), raise_server_exceptions=False) as c:

        def states() -> dict:
            return {m["id"]: m["state"] for m in c.get("/v1/models").json()["data"]}

        assert states() == {"first": "loading", "second": "loading"}  # both listed from the start
        r = c.post("/v1/completions", json=ask)
        assert "still loading" in assert_error(r, 503, "model", "model_loading")["message"]
        assert r.headers["retry-after"] == "5"
        assert c.get("/v1/models/second").json()["state"] == "loading" and c.get("/readyz").status_code == 503
        assert_error(c.post("/v1/models", json={"run_dir": "other", "id": "second"}), 409, "id", "model_exists")
        read.set()
        wait_for(lambda: states() == {"first": "compiling", "second": "loading"}, "the first to compile", 30)
        assert_error(c.post("/v1/tokenize", json={"model": "first", "prompt": "x"}), 503, code="model_loading")
        compiled.set()
        wait_for(lambda: states() == {"first": "ready"}, "the first to be ready and the second to fail", 120)
        assert c.post("/v1/completions", json=ask).status_code == 200
        assert_error(c.post("/v1/completions", json={**ask, "model": "second"}), 404, "model", "model_not_found")
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "not a run folder" in ready.json()["errors"][0]


# ---- operations and extensibility ----------------------------------------------------------------------


def test_metrics_count_requests_tokens_and_time_to_first_token(client):
    client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3})
    client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    text = client.get("/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['mulm_http_requests_total{route="/v1/completions",method="POST",status="200"}'] >= 1
    assert samples['mulm_http_requests_total{route="/v1/completions",method="POST",status="404"}'] >= 1
    assert samples['mulm_generated_tokens_total{model="tiny"}'] >= 3
    assert samples['mulm_time_to_first_token_seconds_count{model="tiny"}'] >= 1
    assert samples['mulm_active_slots{model="tiny"}'] == 0 and samples['mulm_queue_depth{model="tiny"}'] == 0
    assert "# TYPE mulm_http_request_duration_seconds histogram" in text


def test_openapi_describes_every_route(client):
    spec = client.get("/openapi.json").json()
    for route in client.app.routes:
        for method in route.methods - {"HEAD"}:
            assert method.lower() in spec["paths"][route.path.replace(":path}", "}")], route.path
    body = spec["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "prompt", "stream", "top_k"} <= set(body["properties"])


def test_openapi_declares_errors_security_and_the_constraints_the_code_enforces(tmp_path):
    def spec(**settings) -> dict:
        with TestClient(create_app(ServeConfig(state_dir=str(tmp_path / "state"), **settings))) as c:
            return c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()

    keyed = spec(api_keys=(KEY,))
    assert keyed["security"] == [{"bearer": []}]
    for public in ("/healthz", "/readyz", "/", "/lab/{path}"):
        operation = keyed["paths"][public]["get"]
        assert operation["security"] == [] and "401" not in operation["responses"], public
    chat = keyed["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "404", "413", "429", "503"} <= set(chat["responses"]) and "security" not in chat
    error_body = chat["responses"]["404"]["content"]["application/json"]["schema"]
    assert error_body == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(keyed["paths"]["/v1/training/jobs/{id}/cancel"]["post"]["responses"]) >= {"404", "409"}
    schemas = keyed["components"]["schemas"]
    messages = chat["requestBody"]["content"]["application/json"]["schema"]["properties"]["messages"]
    assert messages["minItems"] == 1
    content = schemas["ChatMessage"]["properties"]["content"]["anyOf"]
    assert [c["type"] for c in content] == ["string", "array"]
    body = keyed["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [c.get("minLength") or c.get("minItems") for c in body["properties"]["source"]["anyOf"]] == [1, 1]
    assert body["properties"]["seq_len"]["anyOf"] == [{"minimum": 1, "type": "integer"}, {"type": "null"}]
    open_ = spec()
    assert "security" not in open_ and "401" not in open_["paths"]["/v1/models"]["get"]["responses"]


EXTRA_ROUTES = '''
from starlette.responses import JSONResponse
from starlette.routing import Route


def routes(ctx):
    async def count(request):
        """How many models are served."""
        return JSONResponse({"models": len(ctx.models.all())})

    return [Route("/v1/model-count", count, methods=["GET"])]
'''


def test_extra_route_modules_join_the_app_and_its_description(tmp_path, monkeypatch):
    (tmp_path / "my_feature.py").write_text(EXTRA_ROUTES)
    monkeypatch.syspath_prepend(str(tmp_path))
    extended = make_client(tmp_path, extra_routes=("my_feature",), model=loaded())
    try:
        assert extended.get("/v1/model-count").json() == {"models": 1}
        assert (
            extended.get("/openapi.json").json()["paths"]["/v1/model-count"]["get"]["summary"]
            == "How many models are served."
        )
    finally:
        extended.__exit__(None, None, None)
    with pytest.raises(ValueError, match="no_such_module"):
        create_app(ServeConfig(state_dir=str(tmp_path / "s2"), extra_routes=("no_such_module",)))
