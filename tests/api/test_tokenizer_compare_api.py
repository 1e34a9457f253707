"""POST /v1/tokenizers/compare in-process: a served model's tokenizer, `char` and tokenizer files side by side, paths
confined to the server's folders, bounds on the request, and the route in /openapi.json."""

from __future__ import annotations

import dataclasses

import pytest
from starlette.testclient import TestClient

from support import ALPHABET, StandInEngine, loaded, sentencepiece_tokenizer
from mulm_jax.api import create_app
from mulm_jax.api.routes.tokens import MAX_COMPARE_CHARS, MAX_COMPARED
from mulm_jax.config import ServeConfig
from mulm_jax.data.tokenizer_compare import tokenize

TEXT = "the history of the city"


@pytest.fixture(scope="module")
def bpe():
    return sentencepiece_tokenizer("bpe")


@pytest.fixture(scope="module")
def client(tmp_path_factory, bpe):
    """The stand-in engine serving a tiny model as "tiny" (ALPHABET's characters); a SentencePiece model in the data
    folder, a run folder with its tokenizer in the runs folder."""
    root = tmp_path_factory.mktemp("compare")
    for folder in ("data", "runs/run", "datasets", "elsewhere"):
        (root / folder).mkdir(parents=True)
    (root / "data" / "bpe.model").write_bytes(bpe.serialize())
    (root / "elsewhere" / "bpe.model").write_bytes(bpe.serialize())
    bpe.save(root / "runs" / "run")
    settings = ServeConfig(
        state_dir=str(root / "state"),
        runs_root=str(root / "runs"),
        datasets_dir=str(root / "datasets"),
        data_roots=(str(root / "data"),),
    )
    app = create_app(settings, StandInEngine)
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.ctx.models.serve("tiny", loaded(max_seq_len=16))
        c.root = root
        yield c


def compared(client, *specs, text=TEXT) -> list[dict]:
    r = client.post("/v1/tokenizers/compare", json={"text": text, "tokenizers": list(specs)})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == text
    return r.json()["tokenizers"]


def as_json(result) -> dict:
    body = dataclasses.asdict(result)
    body["merges"] = {str(i): [list(m) for m in ms] for i, ms in body["merges"].items()} if body["merges"] else None
    body["tokens"] = [dict(t) for t in body["tokens"]]
    return body


def test_a_served_models_tokenizer_char_and_a_file_side_by_side_equal_the_python_answer(client, bpe):
    tiny, char, sp = compared(client, "tiny", "char", "bpe.model")
    assert [t["id"] for t in tiny["tokens"]] == client.post(
        "/v1/tokenize", json={"model": "tiny", "prompt": TEXT}
    ).json()["tokens"]
    assert [t["id"] for t in tiny["tokens"]] == [ALPHABET.index(c) for c in TEXT]
    assert (tiny["name"], tiny["kind"], tiny["vocab_size"], tiny["chars_per_token"]) == ("tiny", "char", 32, 1.0)
    assert char["vocab_size"] == len(set(TEXT))
    assert sp == as_json(tokenize(bpe, TEXT, "bpe.model"))
    assert sp["algorithm"] == "bpe" and sp["merges"] and "".join(t["text"] for t in sp["tokens"]) == TEXT


def test_a_relative_path_is_looked_up_in_each_folder_and_an_absolute_one_inside_them_works(client):
    (run,) = compared(client, "run")  # the runs folder's run, its tokenizer.model
    (data,) = compared(client, str(client.root / "data" / "bpe.model"))
    assert run["tokens"] == data["tokens"] and run["name"] == "run"


@pytest.mark.parametrize("spec", ["../elsewhere/bpe.model", "{root}/elsewhere/bpe.model", "/etc/passwd"])
def test_a_path_outside_the_servers_folders_is_refused_with_403(client, spec):
    r = client.post("/v1/tokenizers/compare", json={"text": "x", "tokenizers": ["char", spec.format(root=client.root)]})
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("permission_error", "tokenizers[1]", "path_not_allowed")


@pytest.mark.parametrize(
    "body, param, message",
    [
        (
            {"tokenizers": ["nothing"]},
            "tokenizers[0]",
            "'nothing' is neither a served model (tiny), `char`, nor a path",
        ),
        ({"tokenizers": ["char", "tiny"], "text": "héllo"}, "tokenizers[1]", "character 'é' is not in the char"),
        ({"tokenizers": ["char", "run/config.yaml"]}, "tokenizers[1]", None),  # no such file in any folder
        ({"tokenizers": []}, "tokenizers", "at least 1"),
        ({"tokenizers": ["char"] * (MAX_COMPARED + 1)}, "tokenizers", f"at most {MAX_COMPARED}"),
        ({"tokenizers": ["char"], "text": ""}, "text", "at least 1"),
        ({"tokenizers": ["char"], "text": "a" * (MAX_COMPARE_CHARS + 1)}, "text", f"at most {MAX_COMPARE_CHARS}"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(client, body, param, message):
    r = client.post("/v1/tokenizers/compare", json={"text": "hello", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert message is None or message in error["message"], error["message"]


def test_a_folder_without_a_tokenizer_names_what_is_accepted(client):
    r = client.post("/v1/tokenizers/compare", json={"text": "x", "tokenizers": ["."]})  # the runs folder itself
    assert r.status_code == 400
    assert "holds no tokenizer" in r.json()["error"]["message"]
    assert "a SentencePiece .model file" in r.json()["error"]["message"]


def test_the_route_is_in_the_openapi_description(client):
    doc = client.get("/openapi.json").json()
    operation = doc["paths"]["/v1/tokenizers/compare"]["post"]
    assert {"200", "400", "403"} <= set(operation["responses"])
    schemas = doc["components"]["schemas"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["tokenizers"]["maxItems"] == MAX_COMPARED
    assert {"tokens", "chars_per_token", "split_words", "merges"} <= set(schemas["Tokenization"]["properties"])
