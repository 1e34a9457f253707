"""The embedding space: nearest tokens, analogies and PCA coordinates equal a plain numpy computation from the
parameters' table; only ordinary ids take part; token classes; the residual stream's layers; `inspect embeddings`
and POST /v1/inspect/embeddings."""

from __future__ import annotations

import json

import chex
import numpy as np
import pytest

from support import ALPHABET, loaded, sentencepiece_tokenizer, tiny_run
from mulm_jax.__main__ import main
from mulm_jax.config import load_config
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.infer import load_model
from mulm_jax.inspect import InspectError, Tracer
from mulm_jax.inspect.embedding_space import EmbeddingSpace, pca, query, residual_stream, token_class, token_flags
from mulm_jax.inspect.report import embeddings_json
from mulm_jax.train.loop import train

PROMPT = "the cat sat on the mat"


def table_of(lm) -> np.ndarray:
    return np.asarray(lm.params["embedder"]["token"]["embedding"], np.float64)


def numpy_nearest(table_VxD: np.ndarray, vector_D: np.ndarray, k: int, exclude=()) -> tuple[list[int], np.ndarray]:
    cosine_V = table_VxD @ vector_D / (np.linalg.norm(table_VxD, axis=1) * np.linalg.norm(vector_D))
    cosine_V[list(exclude)] = -np.inf
    order = np.argsort(-cosine_V, kind="stable")[:k]
    return order.tolist(), cosine_V[order]


def numpy_pca(x_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components from the covariance's eigenvectors (not an SVD)."""
    centred = x_NxD - x_NxD.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(-values)[:2]
    return centred @ vectors[:, order], values[order] / values.sum()


def assert_equal_up_to_sign(coords_Nx2, expected_Nx2, atol=1e-4):
    for k in range(2):
        sign = np.sign(np.dot(coords_Nx2[:, k], expected_Nx2[:, k]))
        np.testing.assert_allclose(coords_Nx2[:, k], sign * expected_Nx2[:, k], atol=atol)


def test_a_tokens_nearest_tokens_are_the_numpy_cosine_ranking_of_the_table():
    lm = loaded()
    space = EmbeddingSpace(lm)
    token, found = space.nearest_token("e", top_k=6)
    table = table_of(lm)
    ids, cosines = numpy_nearest(table, table[token], 6, exclude=[token])
    assert token == ALPHABET.index("e") and [n.id for n in found] == ids
    np.testing.assert_allclose([n.cosine for n in found], cosines, atol=1e-5)
    assert space.nearest_token(token, 6) == (token, found)  # by id as by text


def test_the_analogy_is_a_minus_b_plus_c_of_unit_rows_without_a_b_c():
    lm = loaded()
    space = EmbeddingSpace(lm)
    ids, found = space.analogy("k", "m", "w", top_k=5)
    table = table_of(lm)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    expected, cosines = numpy_nearest(table, unit[ids[0]] - unit[ids[1]] + unit[ids[2]], 5, exclude=ids)
    assert ids == [ALPHABET.index(c) for c in "kmw"] and [n.id for n in found] == expected
    np.testing.assert_allclose([n.cosine for n in found], cosines, atol=1e-5)
    assert not set(ids) & {n.id for n in found}


def test_the_tables_pca_equals_numpy_up_to_the_sign_of_each_component():
    lm = loaded(d_model=16)
    coords_Nx2, explained_2 = EmbeddingSpace(lm).projection
    chex.assert_shape(coords_Nx2, (32, 2))
    expected, ratio = numpy_pca(table_of(lm))
    assert_equal_up_to_sign(coords_Nx2, expected)
    np.testing.assert_allclose(explained_2, ratio, rtol=1e-4)
    assert explained_2[0] >= explained_2[1] > 0
    # fewer rows than components: the missing one is zero
    coords, ratio = pca(np.eye(3)[:2])
    np.testing.assert_allclose(coords[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(ratio, [1.0, 0.0])


def test_only_ordinary_ids_take_part_when_the_model_has_more_rows_than_the_tokenizer():
    tokenizer = CharTokenizer(list(ALPHABET[:30]), eos=True, unk=True)  # ids 0..29, eos 30, unk 31
    lm = loaded(tokenizer=tokenizer, vocab_size=40)  # rows 32..39 have no token
    space = EmbeddingSpace(lm)
    np.testing.assert_array_equal(space.ids_N, np.arange(30))
    token, found = space.nearest_token("a", top_k=100)
    assert len(found) == 29 and max(n.id for n in found) < 30
    table = table_of(lm)[:30]
    ids, _ = numpy_nearest(table, table[token], 29, exclude=[token])
    assert [n.id for n in found] == ids
    assert_equal_up_to_sign(space.projection[0], numpy_pca(table)[0])
    with pytest.raises(InspectError, match=r"token id 35 is outside the vocabulary \[0, 32\)"):
        space.token_id(35)


def test_an_untied_model_offers_its_output_head_as_the_other_table():
    lm = loaded(tie_embeddings=False)
    head_VxD = np.asarray(lm.params["embedder"]["head"]["kernel"], np.float64).T
    output, inputs = EmbeddingSpace(lm, "output"), EmbeddingSpace(lm, "input")
    assert not output.tied
    np.testing.assert_allclose(output.table_VxD, head_VxD, rtol=1e-6)
    np.testing.assert_allclose(inputs.table_VxD, table_of(lm), rtol=1e-6)
    token, found = output.nearest_token("q", 4)
    assert [n.id for n in found] == numpy_nearest(head_VxD, head_VxD[token], 4, exclude=[token])[0]
    with pytest.raises(InspectError, match="table 'middle' is not one of input, output"):
        EmbeddingSpace(lm, "middle")


def test_the_residual_stream_runs_from_the_embeddings_to_the_last_blocks_output():
    lm = loaded(num_layers=2, max_seq_len=32, positional="learned")
    tracer = Tracer(lm)
    stream = residual_stream(tracer, PROMPT)
    T = len(PROMPT)
    chex.assert_shape(stream.resid_LxTxD, (3, T, 16))
    chex.assert_shape(stream.coords_LxTx2, (3, T, 2))
    position_TxD = np.asarray(lm.params["embedder"]["position"]["embedding"])[:T]
    np.testing.assert_allclose(stream.resid_LxTxD[0], table_of(lm)[stream.ids_T] + position_TxD, atol=1e-5)
    np.testing.assert_allclose(stream.resid_LxTxD[1:], tracer.trace(PROMPT).residual_LxTxD, atol=1e-5)
    for layer in range(3):
        coords, ratio = numpy_pca(stream.resid_LxTxD[layer].astype(np.float64))
        assert_equal_up_to_sign(stream.coords_LxTx2[layer], coords)
        np.testing.assert_allclose(stream.explained_Lx2[layer], ratio, rtol=1e-4)
    space = EmbeddingSpace(lm)
    found = query(space, tracer, prompt=PROMPT, layer=1, position=-2, top_k=4)
    assert (found.layer, found.position) == (1, T - 2)
    assert [n.id for n in found.nearest] == numpy_nearest(table_of(lm), stream.resid_LxTxD[1, T - 2], 4)[0]
    assert query(space, tracer, prompt=PROMPT).layer == 2  # the last by default


def test_token_classes_and_flags():
    assert token_flags("a") == ["letter", "lower"] and token_class(["letter", "lower"]) == "lower"
    assert token_class(token_flags("A")) == "upper" and token_class(token_flags("7")) == "digit"
    assert token_class(token_flags(",")) == "punctuation" and token_class(token_flags("\n")) == "whitespace"
    assert token_flags(" The") == ["letter", "whitespace", "upper", "word_start"]
    assert token_class(token_flags(" The")) == "word start" and token_class(token_flags(" (")) == "punctuation"
    assert token_class(token_flags("\ufffd")) == "byte" and token_class(token_flags("\u65e5")) == "other"
    space = EmbeddingSpace(loaded(tokenizer=sentencepiece_tokenizer(), vocab_size=310))
    assert 0 not in space.ids_N and 3 not in space.ids_N  # pad, eos (and unk, bos) are no ordinary tokens
    by_piece = dict(zip(space.pieces, space.classes))
    assert by_piece["<0x0A>"] == "byte" and by_piece[" of"] == "word start" and by_piece["."] == "punctuation"


@pytest.mark.parametrize(
    "kwargs, param, message",
    [
        (dict(token="e", top_k=0), "top_k", "top_k=0 is out of range: expected 1 to 100"),
        (dict(token="ab"), "token", "'ab' is 2 tokens for this tokenizer"),
        (dict(token="e", prompt="ab"), "token", "not both"),
        (dict(token="e", layer=1), "layer", "layer 1 chooses the residual stream of a prompt"),
        (dict(prompt="ab", layer=3), "layer", "layer 3 is out of range: expected 0 (the embeddings) to 2"),
        (dict(prompt="ab", position=2), "position", "position 2 is out of range"),
        (dict(analogy=["a", "b"]), "analogy", "3 tokens a, b, c"),
        (dict(analogy=["a", "b", "cd"]), "analogy.c", "'cd' is 2 tokens"),
        (dict(token="\u00e9"), "token", "not in the char vocabulary"),
    ],
)
def test_bad_queries_name_the_argument_and_the_allowed_values(kwargs, param, message):
    lm = loaded(num_layers=2)
    with pytest.raises(InspectError) as e:
        query(EmbeddingSpace(lm), Tracer(lm), **kwargs)
    assert e.value.param == param and message in str(e.value)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embeddings_run")
    cfg = load_config(
        "configs/shakespeare_char.yaml",
        tiny_run(tmp, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2"),
    )
    train(cfg, tmp / "run", quiet=True)
    return tmp / "run"


def test_the_view_prints_the_nearest_tokens_and_draws_the_projections(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["inspect", "embeddings", "--checkpoint", str(run_dir), "--out", str(out), "--top-k", "4"]
    assert main(argv + ["--token", "e", "--analogy", "T,t,o", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    lm = load_model(run_dir)
    space = EmbeddingSpace(lm)
    expected = embeddings_json(space, query(space, token="e", analogy=["T", "t", "o"], top_k=4))
    assert printed == json.loads(json.dumps(expected))
    # the model has 40 rows, the tokenizer fewer ids: the rows beyond them take no part
    tokenizer = lm.tokenizer
    assert tokenizer.vocab_size < lm.config.model.vocab_size == 40
    table = table_of(lm)[: tokenizer.vocab_size]
    e = tokenizer.encode("e")[0]
    special = [i for i in (tokenizer.eos_id, tokenizer.unk_id) if i is not None]
    assert [n["id"] for n in printed["nearest"]] == numpy_nearest(table, table[e], 4, exclude=[e, *special])[0]
    assert len(printed["projection"]["points"]) == len(space.ids_N) and printed["analogy"]["a"]["text"] == "T"
    assert [p.name for p in out.iterdir()] == ["embeddings.png"]
    assert main(argv + ["--prompt", "To be, or", "--layer", "1", "--position", "5"]) == 0
    summary = capsys.readouterr().out
    assert "nearest to the residual at layer 1, position 5 (',')" in summary and summary.count("#") == 4
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.png", "embeddings_residual.png"]
    assert (out / "embeddings_residual.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--token", "e", "--prompt", "To"], "not both"),
        (["--prompt", "To", "--layer", "3"], "layer 3 is out of range: expected 0 (the embeddings) to 2"),
        (["--token", "#99"], "token id 99 is outside the vocabulary"),
        (["--analogy", "a,b"], "an analogy is 3 tokens"),
    ],
)
def test_bad_embeddings_arguments_say_what_is_allowed_and_write_nothing(run_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["inspect", "embeddings", "--checkpoint", str(run_dir), "--out", str(out)] + args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_embeddings_route_answers_what_the_python_computes(client):
    lm = client.app.state.ctx.models.get("tiny").loaded
    space = EmbeddingSpace(lm)
    body = client.post("/v1/inspect/embeddings", json={"model": "tiny", "token": "e", "top_k": 5, "limit": 4}).json()
    assert body["object"] == "embeddings" and body["token"]["id"] == ALPHABET.index("e")
    table = table_of(lm)
    ids, cosines = numpy_nearest(table, table[body["token"]["id"]], 5, exclude=[body["token"]["id"]])
    assert [n["id"] for n in body["nearest"]] == ids
    np.testing.assert_allclose([n["cosine"] for n in body["nearest"]], cosines, atol=1e-5)
    # the first 4 ordinary ids, and the query and its nearest wherever they are
    assert {p["id"] for p in body["projection"]["points"]} == {0, 1, 2, 3, body["token"]["id"], *ids}
    assert body["projection"]["total"] == 32
    coords = {p["id"]: (p["x"], p["y"]) for p in body["projection"]["points"]}
    np.testing.assert_allclose(coords[ids[0]], space.projection[0][ids[0]], atol=1e-5)
    residual = client.post(
        "/v1/inspect/embeddings",
        json={"model": "tiny", "prompt": "hello", "layer": 0, "position": 1, "analogy": ["a", "b", "c"]},
    ).json()
    assert [t["text"] for t in residual["tokens"]] == list("hello") and residual["position"] == 1
    assert len(residual["residual"]) == 3 and len(residual["residual"][0]["points"]) == 5
    assert residual["nearest"][0]["id"] == ALPHABET.index("e")  # layer 0 is the token's own embedding (no positions)
    assert [n["id"] for n in residual["analogy"]["nearest"]] == [n.id for n in space.analogy("a", "b", "c", 10)[1]]
    bare = client.post("/v1/inspect/embeddings", json={"model": "tiny", "projection": False}).json()
    assert bare["nearest"] is None and "projection" not in bare and bare["ordinary_tokens"] == 32
    assert 'route="/v1/inspect/embeddings"' in client.get("/metrics").text


@pytest.mark.parametrize(
    "body, param, needle",
    [
        ({"token": "ab"}, "token", "2 tokens"),
        ({"token": 99}, "token", "token id 99"),
        ({"prompt": "ab", "layer": 7}, "layer", "layer 7 is out of range"),
        ({"prompt": "ab", "position": 5}, "position", "position 5 is out of range"),
        ({"prompt": "a" * 41}, "prompt", "at most 40"),
        ({"analogy": ["a", "b"]}, "analogy", "analogy"),
        ({"token": "a", "top_k": 101}, "top_k", "top_k"),
        ({"token": "a", "table": "middle"}, "table", "input"),
    ],
)
def test_embeddings_route_errors_name_the_field(client, body, param, needle):
    response = client.post("/v1/inspect/embeddings", json={"model": "tiny", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and needle in error["message"]
