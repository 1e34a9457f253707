"""The API as users run it: `serve.py` in its own uvicorn process, driven over HTTP only. A data set is
assembled, a model trained and then served, and the official `openai` client completes, chats and streams;
a client that leaves mid-stream frees its slots; job records survive a server restart."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import pytest

from support import CORPUS, TINY, Server, finished_job, wait_for
from support import SERVER_KEY as KEY


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server that has assembled a data set, trained a tiny model on it and loaded it, all over HTTP."""
    root = tmp_path_factory.mktemp("e2e")
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text(CORPUS)
    server = Server(root, "--slots", "2")
    try:
        r = server.http.post("/v1/datasets", json={"source": "corpus.txt", "tokenizer": "char", "seq_len": 64})
        assert r.status_code == 202, r.text
        dataset = finished_job(server, f"/v1/datasets/jobs/{r.json()['id']}")
        version = dataset["result"]["version"]
        assert server.http.get(f"/v1/datasets/{version}").json()["version"] == version
        r = server.http.post(
            "/v1/training/jobs",
            json={"config": "shakespeare_char", "dataset": version, "overrides": TINY, "name": "tiny"},
        )
        assert r.status_code == 202, r.text
        job = finished_job(server, f"/v1/training/jobs/{r.json()['id']}")
        assert job["step"] == 30 and job["latest_metrics"]["eval"]["val_loss"] > 0
        r = server.http.post("/v1/models", json={"run_dir": "tiny"})
        assert r.status_code == 201, r.text
        yield server, job
    finally:
        server.stop()


def test_the_openai_client_completes_chats_and_streams(served):
    server, _ = served
    log = Path(server.log.name).read_text()
    assert "mulm_jax.api.registry" in log and "Unable to initialize backend" not in log  # info, not jax's probing
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    whole = client.completions.create(model="tiny", prompt="First", max_tokens=20, temperature=0)
    assert whole.usage.completion_tokens == 20 and whole.choices[0].finish_reason == "length"
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(model="tiny", prompt="First", max_tokens=20, temperature=0, stream=True)
        if chunk.choices
    )
    assert streamed == whole.choices[0].text
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Speak"}], max_tokens=10, temperature=0, seed=3
    )
    assert chat.choices[0].message.role == "assistant"
    deltas = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Speak"}], max_tokens=10, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(deltas) == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt="First", max_tokens=1000)
    assert refused.value.body["param"] == "max_tokens"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()


def test_the_openai_client_gets_embeddings_with_its_default_arguments(served):
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    texts = ["First", "Speak, speak."]
    got = client.embeddings.create(model="tiny", input=texts)  # asks for base64 unless told otherwise
    floats = server.http.post("/v1/embeddings", json={"model": "tiny", "input": texts}).json()["data"]
    assert [e.index for e in got.data] == [0, 1] and got.usage.prompt_tokens == 5 + 13
    for item, reference in zip(got.data, floats):
        np.testing.assert_array_equal(np.asarray(item.embedding, np.float32), reference["embedding"])


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_frees_its_slots_at_once(served, stream):
    server, _ = served
    before = server.metric('mulm_generated_tokens_total{model="tiny"}')
    ask = {"model": "tiny", "prompt": "First", "max_tokens": 58, "n": 64, "stream": stream}  # 3,712 tokens
    headers = {"Authorization": f"Bearer {KEY}"}
    if stream:
        with httpx.stream("POST", server.url + "/v1/completions", json=ask, timeout=30, headers=headers) as r:
            assert r.status_code == 200
            next(r.iter_lines())
    else:  # the request sent, the client hangs up once the generation has started
        body = json.dumps(ask).encode()
        with socket.create_connection((urlsplit(server.url).hostname, urlsplit(server.url).port)) as client:
            client.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(lambda: server.metric('mulm_active_slots{model="tiny"}') > 0, "the generation to start", 60)
    wait_for(
        lambda: server.metric('mulm_active_slots{model="tiny"}') == 0
        and server.metric('mulm_queue_depth{model="tiny"}') == 0,
        "the slots to be freed",
        60,
    )
    # freed at once, not when done: well under half of the tokens asked for were generated
    assert server.metric('mulm_generated_tokens_total{model="tiny"}') - before < 3712 / 2


@pytest.mark.slow  # 35 s; test_api_jobs resumes a job interrupted by a restart in the fast suite
def test_a_job_running_when_the_server_dies_is_interrupted_and_resumes_from_its_checkpoint(served):
    server, trained = served
    root = server.root
    first = Server(root)  # a second server on the same state folder sees the same records
    try:
        assert trained["id"] in [j["id"] for j in first.http.get("/v1/training/jobs").json()["data"]]
        r = first.http.post(
            "/v1/training/jobs",
            json={
                "config": "shakespeare_char",
                "dataset": trained["request"]["dataset"],
                "name": "long",
                "overrides": {**TINY, "train.steps": 100000, "train.checkpoint_every": 100000},
            },
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_for(lambda: first.http.get(f"/v1/training/jobs/{job_id}").json()["step"], "a first step")
    finally:
        first.stop(signal.SIGKILL)  # the server dies; its trainer lives on
    second = Server(root)  # stops the orphan (which saves a checkpoint) before anything else
    try:
        job = second.http.get(f"/v1/training/jobs/{job_id}").json()
        assert job["state"] == "interrupted"
        saved = sorted(int(p.name) for p in (root / "runs" / "long" / "checkpoints").iterdir() if p.name.isdigit())
        assert saved and saved[-1] >= job["step"] - TINY["train.log_every"]
        assert second.http.post(f"/v1/training/jobs/{job_id}/resume").json()["state"] == "running"
        wait_for(
            lambda: (second.http.get(f"/v1/training/jobs/{job_id}").json()["step"] or 0) > saved[-1],
            "a step past the checkpoint",
        )
        assert "resumed from step" in (root / "state" / "logs" / f"{job_id}.log").read_text()
        assert second.http.post(f"/v1/training/jobs/{job_id}/cancel").status_code == 200
    finally:
        second.stop()
