"""A server for a class: a keys file with names, scopes and quotas; 403 outside a key's scopes; jobs owned by the key
that started them (another key's are 404, an admin key's are all); run folders served by their owner; quotas on
streams, jobs, steps and requests answering 429 with Retry-After; GET /v1/me; keys without scopes keep them all."""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from support import ROOT, RUN_CORPUS, StandInEngine, loaded, wait_for
from mulm_jax.api import create_app
from mulm_jax.api.jobs import _SCHEMA, JobManager
from mulm_jax.api.keys import SCOPES, fingerprint, read_keys_file
from mulm_jax.config import ServeConfig
from mulm_jax.errors import MulmError

TEACHER, ALICE, BOB, READER, PLAIN = "sk-teacher-0", "sk-alice-0", "sk-bob-0", "sk-reader-0", "sk-plain-0"
LIMITED = "sk-limited-0"
KEYS_FILE = f"""# the class of issue 32
{TEACHER}  name=teacher  scopes=admin  max_streams=0
{ALICE}  name=alice  scopes=generate,inspect,train  max_streams=2  max_jobs=2  max_steps=150
{BOB}  name=bob  scopes=generate,inspect,data,train
{READER}  name=reader  scopes=generate,inspect
{LIMITED}  name=limited  scopes=generate  requests_per_minute=3

{PLAIN}
"""
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # a job that runs until cancelled


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    (root / "keys").write_text(KEYS_FILE)
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text(RUN_CORPUS)
    settings = ServeConfig(
        api_keys_file=str(root / "keys"),
        state_dir=str(root / "state"),
        runs_root=str(root / "runs"),
        datasets_dir=str(root / "datasets"),
        data_roots=(str(root / "data"),),
        configs_dir=str(ROOT / "configs"),
        slots=2,
        max_streams=8,
    )
    client = TestClient(create_app(settings, StandInEngine), raise_server_exceptions=False)
    client.__enter__()
    client.app.state.ctx.models.serve("tiny", loaded(max_seq_len=64))
    yield client
    client.__exit__(None, None, None)


def sleeping_job(server, owner: str, name: str, steps: int = 100) -> dict:
    """A training job of `owner` that sleeps (nothing trains) in run folder `name`."""
    workdir = Path(server.app.state.ctx.settings.runs_root).resolve() / name
    return server.app.state.ctx.jobs.start(
        "training", SLEEPER, workdir=str(workdir), request={}, owner=owner, steps=steps
    )


def error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    return body


# ---- the keys file -------------------------------------------------------------------------------------------------


def test_the_keys_file_gives_names_scopes_and_quotas_and_a_bare_key_every_scope(tmp_path):
    (tmp_path / "keys").write_text(KEYS_FILE)
    teacher, alice, bob, reader, limited, plain = read_keys_file(tmp_path / "keys")
    assert alice.name == "alice" and alice.scopes == {"generate", "inspect", "train"}
    assert (alice.quotas.max_streams, alice.quotas.max_jobs, alice.quotas.max_steps) == (2, 2, 150)
    assert alice.quotas.tokens_per_minute is None  # the server's setting
    assert teacher.quotas.max_streams == 0  # no limit, whatever the server's
    assert plain.scopes == set(SCOPES) and plain.owner == f"key:{fingerprint(PLAIN)}"
    assert "sk-" not in repr(alice)  # the key itself is never shown


@pytest.mark.parametrize(
    "line, message",
    [
        ("sk-x scopes=generate,train,teach", "line 2: scopes: unknown scope 'teach': expected some of generate, "),
        ("sk-x max_streams=four", "line 2: max_streams='four': expected a whole number >= 0"),
        ("sk-x colour=red", "line 2: unknown field 'colour': expected name, scopes or one of requests_per_minute"),
        ("name=alice scopes=admin", "line 2: expected the key first, then its fields; the line starts with the field"),
        ("sk-x name=al/ice", "line 2: name='al/ice': expected letters, digits"),
        ("sk-x scopes", "line 2: 'scopes': expected FIELD=VALUE"),
    ],
)
def test_a_mistake_in_the_keys_file_names_the_line_the_value_and_what_was_expected(tmp_path, line, message):
    (tmp_path / "keys").write_text(f"# a comment\n{line}\n")
    with pytest.raises(MulmError, match="keys file") as refused:
        read_keys_file(tmp_path / "keys")
    assert message in str(refused.value)


def test_two_keys_with_one_name_are_refused(tmp_path):
    (tmp_path / "keys").write_text("sk-a name=alice\nsk-b name=alice\n")
    with pytest.raises(MulmError, match="the name 'alice' is given to two keys"):
        read_keys_file(tmp_path / "keys")


# ---- scopes --------------------------------------------------------------------------------------------------------


def test_a_route_outside_the_keys_scopes_answers_403_naming_the_scope(server):
    ask = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
    assert server.post("/v1/completions", json=ask, headers=auth(READER)).status_code == 200
    refused = error(
        server.post("/v1/training/jobs", json={"config": "x"}, headers=auth(READER)), 403, "insufficient_scope"
    )
    assert refused["type"] == "permission_error"
    assert "POST /v1/training/jobs needs the 'train' scope; this key has generate, inspect" in refused["message"]
    body = error(server.post("/v1/models", json={"run_dir": "x"}, headers=auth(READER)), 403, "insufficient_scope")
    assert "needs the 'admin' or 'train' scope" in body["message"]
    error(server.post("/v1/datasets", json={"source": "corpus.txt"}, headers=auth(ALICE)), 403, "insufficient_scope")
    error(server.get("/v1/training/jobs", headers=auth(READER)), 403, "insufficient_scope")
    assert server.get("/v1/models", headers=auth(READER)).status_code == 200  # any key lists the models


def test_the_openapi_description_names_each_routes_scopes(server):
    paths = server.get("/openapi.json", headers=auth(READER)).json()["paths"]
    assert (
        paths["/v1/training/jobs"]["post"]["x-scopes"] == ["train"]
        and "403" in paths["/v1/completions"]["post"]["responses"]
    )
    assert paths["/v1/models"]["post"]["x-scopes"] == ["admin", "train"]
    assert "x-scopes" not in paths["/v1/models"]["get"]


def test_me_tells_a_key_its_name_scopes_quotas_and_usage(server):
    me = server.get("/v1/me", headers=auth(ALICE)).json()
    assert me["name"] == "alice" and me["scopes"] == ["generate", "inspect", "train"]
    assert me["quotas"] == {
        "requests_per_minute": 0,
        "tokens_per_minute": 0,
        "max_streams": 2,
        "max_jobs": 2,
        "max_steps": 150,
    }
    assert me["usage"] == {"streams": 0, "jobs": 0, "steps": 0}
    teacher = server.get("/v1/me", headers=auth(TEACHER)).json()
    assert teacher["scopes"] == list(SCOPES) and teacher["quotas"]["max_streams"] == 0  # the server's 8 overridden
    assert server.get("/v1/me", headers=auth(PLAIN)).json()["quotas"]["max_streams"] == 8


# ---- ownership -----------------------------------------------------------------------------------------------------


def test_a_key_lists_reads_and_cancels_only_its_own_jobs_and_admin_every_one(server):
    bobs = sleeping_job(server, "bob", "bobs-run")
    alices = sleeping_job(server, "alice", "alices-run")
    try:
        listed = server.get("/v1/training/jobs", headers=auth(ALICE)).json()["data"]
        assert [j["id"] for j in listed] == [alices["id"]] and listed[0]["owner"] == "alice"
        for method, path in [
            ("GET", f"/v1/training/jobs/{bobs['id']}"),
            ("GET", f"/v1/training/jobs/{bobs['id']}/events"),
            ("POST", f"/v1/training/jobs/{bobs['id']}/cancel"),
            ("POST", f"/v1/training/jobs/{bobs['id']}/resume"),
        ]:
            error(server.request(method, path, headers=auth(ALICE)), 404, "job_not_found")  # as if there were none
        assert server.get(f"/v1/training/jobs/{alices['id']}", headers=auth(ALICE)).status_code == 200
        every = {j["id"] for j in server.get("/v1/training/jobs", headers=auth(TEACHER)).json()["data"]}
        assert {bobs["id"], alices["id"]} <= every
        assert server.post(f"/v1/training/jobs/{bobs['id']}/cancel", headers=auth(TEACHER)).status_code == 200
        assert server.post(f"/v1/training/jobs/{alices['id']}/cancel", headers=auth(ALICE)).status_code == 200
        for job in (bobs, alices):
            url = f"/v1/training/jobs/{job['id']}"
            wait_for(lambda: server.get(url, headers=auth(TEACHER)).json()["state"] == "cancelled", "cancelled", 30)
    finally:
        for job in (bobs, alices):
            if server.get(f"/v1/training/jobs/{job['id']}", headers=auth(TEACHER)).json()["state"] == "running":
                server.post(f"/v1/training/jobs/{job['id']}/cancel", headers=auth(TEACHER))


def test_a_run_folder_is_its_owners_to_serve_and_train_into_and_the_teachers_to_load(server):
    job = sleeping_job(server, "bob", "bobs-folder")
    try:
        body = error(server.post("/v1/models", json={"run_dir": "bobs-folder"}, headers=auth(ALICE)), 403, "not_owner")
        assert "'bobs-folder' was not made by a training job of this key" in body["message"]
        ask = {"config": "shakespeare_char", "name": "bobs-folder"}
        error(server.post("/v1/training/jobs", json=ask, headers=auth(ALICE)), 403, "not_owner")
        # its owner and the teacher get past ownership to loading it (it holds no checkpoint: 400)
        for key in (BOB, TEACHER):
            error(server.post("/v1/models", json={"run_dir": "bobs-folder"}, headers=auth(key)), 400, "invalid_run")
    finally:
        server.post(f"/v1/training/jobs/{job['id']}/cancel", headers=auth(TEACHER))


def test_only_the_teacher_unloads_a_model_the_server_loaded(server):
    ctx = server.app.state.ctx
    ctx.models.serve("spare", loaded(max_seq_len=64))
    body = error(server.delete("/v1/models/spare", headers=auth(ALICE)), 403, "not_owner")
    assert "unloading it needs the 'admin' scope" in body["message"]
    error(server.delete("/v1/models/spare", headers=auth(READER)), 403, "insufficient_scope")
    assert server.delete("/v1/models/spare", headers=auth(TEACHER)).json() == {
        "id": "spare",
        "object": "model",
        "deleted": True,
    }
    error(server.get("/v1/models/spare", headers=auth(TEACHER)), 404, "model_not_found")


# ---- quotas --------------------------------------------------------------------------------------------------------


def test_streams_past_a_keys_quota_answer_429_with_retry_after_and_beyond_it_403(server):
    engine = server.app.state.ctx.models.get("tiny").engine
    ask = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
    error(server.post("/v1/completions", json={**ask, "n": 3}, headers=auth(ALICE)), 403, "max_streams")
    engine.stepping.clear()  # hold the steps: alice's two streams stay in flight
    held = threading.Thread(target=lambda: server.post("/v1/completions", json={**ask, "n": 2}, headers=auth(ALICE)))
    held.start()
    try:
        wait_for(lambda: server.get("/v1/me", headers=auth(ALICE)).json()["usage"]["streams"] == 2, "2 streams", 30)
        refused = server.post("/v1/completions", json=ask, headers=auth(ALICE))
        body = error(refused, 429, "max_streams")
        assert refused.headers["Retry-After"] == "1" and "(max_streams)" in body["message"]
        # another key is not held back by alice's quota
        other = threading.Thread(target=lambda: server.post("/v1/completions", json=ask, headers=auth(BOB)))
        other.start()
        wait_for(lambda: server.get("/v1/me", headers=auth(BOB)).json()["usage"]["streams"] == 1, "bob's stream", 30)
    finally:
        engine.stepping.set()
    held.join(30)
    other.join(30)
    assert server.post("/v1/completions", json=ask, headers=auth(ALICE)).status_code == 200


def test_jobs_and_steps_past_a_keys_quota_answer_429_and_a_job_beyond_it_403(server):
    ask = {"config": "shakespeare_char", "overrides": {"train.steps": 100}}
    body = error(
        server.post("/v1/training/jobs", json={**ask, "overrides": {"train.steps": 1000}}, headers=auth(ALICE)),
        403,
        "max_steps",
    )
    assert "train.steps=1000" in body["message"] and "at most 150" in body["message"]
    first = sleeping_job(server, "alice", "alice-1", steps=100)
    try:
        refused = server.post("/v1/training/jobs", json=ask, headers=auth(ALICE))
        body = error(refused, 429, "max_steps")
        assert "take 100 of its 150 steps; this one asks for 100" in body["message"]
        assert refused.headers["Retry-After"] == "30"
        second = sleeping_job(server, "alice", "alice-2", steps=10)
        try:
            refused = server.post(
                "/v1/training/jobs", json={**ask, "overrides": {"train.steps": 10}}, headers=auth(ALICE)
            )
            assert error(refused, 429, "max_jobs") and refused.headers["Retry-After"] == "30"
            me = server.get("/v1/me", headers=auth(ALICE)).json()
            assert me["usage"] == {"streams": 0, "jobs": 2, "steps": 110}
        finally:
            server.post(f"/v1/training/jobs/{second['id']}/cancel", headers=auth(ALICE))
    finally:
        server.post(f"/v1/training/jobs/{first['id']}/cancel", headers=auth(ALICE))


def test_a_keys_own_request_rate_is_counted_apart_from_other_keys(server):
    statuses = [server.get("/v1/models", headers=auth(LIMITED)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = server.get("/v1/models", headers=auth(LIMITED))
    assert refused.headers["Retry-After"] and "3 requests per minute" in refused.json()["error"]["message"]
    assert all(server.get("/v1/models", headers=auth(BOB)).status_code == 200 for _ in range(5))


# ---- as before -----------------------------------------------------------------------------------------------------


def test_without_keys_every_caller_may_do_everything_and_sees_every_job(tmp_path):
    settings = ServeConfig(state_dir=str(tmp_path / "state"), runs_root=str(tmp_path / "runs"))
    with TestClient(create_app(settings, StandInEngine)) as open_server:
        me = open_server.get("/v1/me").json()
        assert me["name"] is None and me["scopes"] == list(SCOPES)
        job = sleeping_job(open_server, None, "anyones")
        try:
            assert [j["id"] for j in open_server.get("/v1/training/jobs").json()["data"]] == [job["id"]]
        finally:
            assert open_server.post(f"/v1/training/jobs/{job['id']}/cancel").status_code == 200


def test_a_key_given_on_the_command_line_has_every_scope(tmp_path):
    settings = ServeConfig(state_dir=str(tmp_path / "state"), api_keys=("sk-flag-0", "sk-flag-0"))
    with TestClient(create_app(settings, StandInEngine)) as keyed:
        me = keyed.get("/v1/me", headers=auth("sk-flag-0")).json()
        assert me["scopes"] == list(SCOPES) and me["name"] == f"key:{fingerprint('sk-flag-0')}"


def test_one_keys_32_streams_do_not_keep_another_keys_one_waiting(server, monkeypatch):
    engine = server.app.state.ctx.models.get("tiny").engine
    submitted = []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda *a, **kw: submitted.append(submit(*a, **kw)) or submitted[-1])
    ask = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "stream": True}
    engine.stepping.clear()
    many = threading.Thread(target=lambda: server.post("/v1/completions", json={**ask, "n": 32}, headers=auth(TEACHER)))
    many.start()
    wait_for(lambda: len(submitted) == 32, "the teacher's 32 streams", 30)
    one = threading.Thread(target=lambda: server.post("/v1/completions", json=ask, headers=auth(BOB)))
    one.start()
    wait_for(lambda: len(submitted) == 33, "bob's stream", 30)
    engine.stepping.set()
    many.join(60)
    one.join(60)
    bobs = submitted[-1]
    assert bobs.owner == "key:" + fingerprint(BOB) and bobs.completion.finish_reason == "length"
    firsts = sorted(r.first_token_at for r in submitted[:32])
    assert bobs.first_token_at < firsts[3]  # in the second pair of slots; behind all 32 in a plain queue


def test_a_job_database_from_before_owners_gains_the_columns_and_keeps_its_jobs(tmp_path):
    (tmp_path / "state").mkdir()
    db = sqlite3.connect(tmp_path / "state" / "mulm.sqlite3")
    old_schema = _SCHEMA.replace(",\n    owner TEXT,\n    steps INTEGER", "")
    assert "owner" not in old_schema
    db.execute(old_schema)
    db.execute(
        "INSERT INTO jobs (id, kind, state, created, request, command, log_path) "
        "VALUES ('job-old', 'training', 'succeeded', 1, '{}', '[]', 'x.log')"
    )
    db.commit()
    db.close()
    jobs = JobManager(ServeConfig(state_dir=str(tmp_path / "state")))
    try:
        (old,) = jobs.list("training")
        assert old["id"] == "job-old" and old["owner"] is None and old["steps"] is None
        assert jobs.list("training", "alice") == []  # nobody's but an admin's (or everyone's without keys)
    finally:
        jobs.close()
