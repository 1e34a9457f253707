"""Inspection: traced attention equals a naive softmax(q k^T / sqrt(d) + mask + bias) from the layer's own weights,
the logit lens's last layer equals the model's logits, head-role measurements on hand-made attention, token pieces,
the CLI's pictures and errors, the run plot, and POST /v1/inspect."""

from __future__ import annotations

import json
import math
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import loaded, naive_rope, tiny_run
from mulm_jax.__main__ import main
from mulm_jax.config import load_config
from mulm_jax.data.tokenizer import SentencePieceTokenizer
from mulm_jax.inspect import InspectError, Tracer, token_pieces
from mulm_jax.eval.scoring import EvalError
from mulm_jax.inspect.heads import attention_stats, head_roles, induction_scores, induction_sequence
from mulm_jax.inspect.interventions import head_edits
from mulm_jax.inspect.positions import loss_by_position
from mulm_jax.runs import read_metrics
from mulm_jax.train.loop import train

PROMPT = "the cat sat on the mat, the end."  # 32 characters: bucket 32


def _layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p.get("bias", 0.0))


def naive_attention(cfg, layer_params, x_TxD):
    """softmax(q k^T / sqrt(Dh) + mask + ALiBi bias) of one pre-norm layer, [H, T, T], in numpy."""
    T = x_TxD.shape[0]
    H, K, Dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    h = _layer_norm(x_TxD, layer_params["self_attention_norm"])
    attn = layer_params["self_attention"]
    project = lambda name: np.einsum("td,dkh->tkh", h, np.asarray(attn[name]["kernel"])) + np.asarray(  # noqa: E731
        attn[name]["bias"]
    )
    q, k = project("query"), project("key")
    if cfg.positional == "rope":
        q, k = naive_rope(q, cfg.rope_theta), naive_rope(k, cfg.rope_theta)
    k = np.repeat(k, H // K, axis=1)  # each kv head serves H / K query heads
    logits_HxTxT = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(Dh)
    qpos, kpos = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = kpos <= qpos
    if cfg.attention == "sliding_window":
        allowed &= qpos - kpos < cfg.sliding_window
    if cfg.attention == "block_sparse":
        allowed &= (
            (qpos // cfg.block_size == kpos // cfg.block_size)
            | (kpos < cfg.num_global_tokens)
            | (qpos < cfg.num_global_tokens)
        )
    if cfg.positional == "alibi":
        slopes_H = 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
        logits_HxTxT = logits_HxTxT - slopes_H[:, None, None] * (qpos - kpos)[None]
    logits_HxTxT = np.where(allowed[None], logits_HxTxT, -np.inf)
    e = np.exp(logits_HxTxT - logits_HxTxT.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


VARIANTS = {
    "mha": dict(),
    "gqa": dict(num_heads=4, num_kv_heads=2),
    "mqa": dict(num_kv_heads=1),
    "sliding_window": dict(attention="sliding_window", sliding_window=5),
    "block_sparse": dict(attention="block_sparse", block_size=8, num_global_tokens=2),
    "alibi": dict(positional="alibi"),
    "rope": dict(positional="rope", num_kv_heads=2),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_attention_rows_equal_a_naive_softmax_and_the_last_lens_equals_the_logits(variant):
    lm = loaded(num_layers=2, max_seq_len=64, **VARIANTS[variant])
    cfg = lm.config.model
    trace = Tracer(lm).trace(PROMPT, top_k=4)
    T, L, H = len(PROMPT), cfg.num_layers, cfg.num_heads
    chex.assert_shape(trace.attention_LxHxTxT, (L, H, T, T))
    chex.assert_shape([trace.residual_norm_LxT, trace.lens_next_rank_LxT], (L, T))
    chex.assert_shape([trace.lens_top_ids_LxTxN, trace.lens_top_probs_LxTxN], (L, T, 4))
    ids = np.asarray(trace.ids_T)
    params = jax.tree.map(np.asarray, lm.params)
    embedding = params["embedder"]["token"]["embedding"][ids]
    if cfg.positional == "learned":
        embedding = embedding + params["embedder"]["position"]["embedding"][:T]
    inputs = [embedding] + list(trace.residual_LxTxD[:-1])
    for layer in range(L):
        expected = naive_attention(cfg, params["decoder"][f"layer_{layer}"], inputs[layer])
        np.testing.assert_allclose(trace.attention_LxHxTxT[layer], expected, atol=2e-5)
    np.testing.assert_allclose(trace.residual_norm_LxT, np.linalg.norm(trace.residual_LxTxD, axis=-1), rtol=1e-5)

    logp_TxV = np.asarray(jax.nn.log_softmax(lm.model.apply({"params": lm.params}, jnp.asarray(ids[None]))[0]))
    order_TxV = np.argsort(-logp_TxV, axis=-1, kind="stable")
    np.testing.assert_array_equal(trace.lens_top_ids_LxTxN[-1], order_TxV[:, :4])
    np.testing.assert_allclose(trace.lens_top_probs_LxTxN[-1], np.exp(np.sort(logp_TxV)[:, ::-1][:, :4]), atol=1e-5)
    nxt = logp_TxV[np.arange(T - 1), ids[1:]]
    np.testing.assert_allclose(trace.logprob_T[1:], nxt, atol=1e-5)
    assert np.isnan(trace.logprob_T[0]) and (trace.top_ids_TxN[0] == -1).all()
    np.testing.assert_array_equal(trace.top_ids_TxN[1:], order_TxV[:-1, :4])
    np.testing.assert_array_equal(trace.lens_next_rank_LxT[-1, :-1], (logp_TxV[:-1] > nxt[:, None]).sum(-1))
    assert trace.lens_next_rank_LxT[-1, -1] == -1


def test_lens_of_an_earlier_layer_is_its_residual_through_the_final_norm_and_head():
    lm = loaded(num_layers=3, max_seq_len=64)
    trace = Tracer(lm).trace(PROMPT, top_k=3)
    params = jax.tree.map(np.asarray, lm.params)
    h = _layer_norm(trace.residual_LxTxD[0], params["decoder"]["final_norm"])
    logits = h @ params["embedder"]["token"]["embedding"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_array_equal(trace.lens_top_ids_LxTxN[0], np.argsort(-probs, -1, kind="stable")[:, :3])
    np.testing.assert_allclose(trace.lens_top_probs_LxTxN[0], np.sort(probs)[:, ::-1][:, :3], atol=1e-5)


def test_prompts_in_one_bucket_share_one_compilation():
    tracer = Tracer(loaded(max_seq_len=64))
    for prompt in ("ab", "abcdefghij", "a" * 16):  # bucket 16
        tracer.trace(prompt)
    assert tracer.traces == 1
    tracer.trace("a" * 17)
    assert tracer.traces == 2


def test_encoder_decoder_trace_has_cross_and_encoder_attention():
    lm = loaded(architecture="encoder_decoder", num_layers=2, max_seq_len=32)
    trace = Tracer(lm).trace("hello there", target="abc", top_k=2)
    chex.assert_shape(trace.cross_attention_LxHxTxS, (2, 4, 3, 11))
    chex.assert_shape(trace.encoder_attention_LxHxSxS, (2, 4, 11, 11))
    np.testing.assert_allclose(trace.cross_attention_LxHxTxS.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(trace.encoder_attention_LxHxSxS.sum(-1), 1.0, atol=1e-5)
    assert trace.source_pieces == list("hello there") and trace.pieces == list("abc")


def test_head_roles_of_an_encoder_decoder_are_its_decoders_self_attention():
    tracer = Tracer(loaded(architecture="encoder_decoder", num_layers=1, max_seq_len=32))
    trace = tracer.trace("hello there")  # the engine's reading: "hello ther" the source, "e" the decoder's start
    assert trace.source_pieces == list("hello ther") and trace.pieces == ["e"]
    roles = head_roles(tracer, trace.attention_LxHxTxT)
    chex.assert_shape(roles.induction_LxH, (1, 4))
    assert np.all((roles.induction_LxH >= 0) & (roles.induction_LxH <= 1))


def test_bad_prompts_name_the_value_and_the_allowed_range():
    tracer = Tracer(loaded(max_seq_len=16))
    with pytest.raises(InspectError, match="empty"):
        tracer.trace("")
    with pytest.raises(InspectError, match="17 tokens: expected 1 to 16"):
        tracer.trace("a" * 17)
    with pytest.raises(InspectError, match="token id 40 is outside"):
        tracer.trace([1, 40])
    with pytest.raises(InspectError, match="top_k=0"):
        tracer.trace("ab", top_k=0)


def previous_token_head(T: int) -> np.ndarray:
    """Attention of a perfect previous-token head (the first query on itself)."""
    a = np.zeros((T, T))
    a[0, 0] = 1.0
    a[np.arange(1, T), np.arange(T - 1)] = 1.0
    return a


def test_head_measurements_on_hand_made_attention():
    T = 6
    previous = previous_token_head(T)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    stats = attention_stats(np.stack([previous, uniform])[None])
    np.testing.assert_allclose(stats["previous_token"][0], [1.0, np.mean(1 / np.arange(2, T + 1))], atol=1e-6)
    np.testing.assert_allclose(stats["entropy"][0], [0.0, np.mean(np.log(np.arange(2, T + 1)))], atol=1e-6)
    np.testing.assert_allclose(stats["mean_distance"][0], [1.0, np.mean(np.arange(1, T) / 2)], atol=1e-6)

    half = 5
    seq = induction_sequence(vocab=32, half=half, seed=3)
    chex.assert_shape(seq, (2 * half,))
    np.testing.assert_array_equal(seq[:half], seq[half:])
    induction = np.zeros((2 * half, 2 * half))
    for q in range(2 * half):
        induction[q, q - half + 1 if q >= half else 0] = 1.0
    scores = induction_scores(np.stack([induction, previous_token_head(2 * half)])[None], half)
    np.testing.assert_allclose(scores[0], [1.0, 0.0])


@pytest.fixture(scope="module")
def sentencepiece():
    text = (
        "the history of the city is long and the people of the town tell it well. " * 40
        + "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c "
    )
    return SentencePieceTokenizer.train([text], "bpe", 320)


def test_token_pieces_join_to_the_decoded_text_and_keep_word_start_spaces(sentencepiece):
    for text in ("The history of the town", "  two  spaces", "caf\u00e9 \u65e5\u672c\u8a9e!"):
        ids = sentencepiece.encode(text)
        pieces = token_pieces(sentencepiece, ids)
        assert "".join(pieces) == sentencepiece.decode(ids)
    pieces = token_pieces(sentencepiece, sentencepiece.encode("the history of the town"))
    assert any(p.startswith(" ") for p in pieces[1:])
    assert sentencepiece.piece(sentencepiece.encode(" the")[-1]).startswith(" ")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect_run")
    workdir = tmp / "run"
    cfg = load_config(
        "configs/shakespeare_char.yaml",
        tiny_run(tmp, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1"),
    )
    train(cfg, workdir, quiet=True)
    return workdir


@pytest.mark.parametrize(
    "view, files",
    [
        ("attention", ["attention_L1_H0.png", "attention_L1_H1.png", "attention_grid.png"]),
        ("lens", ["lens.png"]),
        ("tokens", ["tokens.png"]),
        ("heads", ["heads.png"]),
    ],
)
def test_each_view_draws_its_pictures_and_prints_numbers(run_dir, tmp_path, capsys, view, files):
    out = tmp_path / "out"
    assert main(["inspect", view, "--checkpoint", str(run_dir), "--prompt", "To be, or not", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert all((out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert capsys.readouterr().out.strip()
    assert main(["inspect", view, "--checkpoint", str(run_dir), "--prompt", "To be", "--out", str(out), "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["num_layers"] == 2 and len(numbers["tokens"]) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "2"], "--layer 2 is out of range: this model has layers 0 to 1"),
        (["--head", "5"], "--head 5 is out of range: this model has heads 0 to 1"),
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "o" * 33], "33 tokens: expected 1 to 32"),
        (["--prompt", "\u00e9"], "not in the char vocabulary"),
    ],
)
def test_bad_inspect_arguments_say_what_is_allowed_and_write_nothing(run_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = ["inspect", "attention", "--checkpoint", str(run_dir), "--out", str(out)] + args
    if "--prompt" not in args:
        argv += ["--prompt", "To be"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_loss_by_position_averages_each_windows_own_token_losses():
    lm = loaded(num_layers=2, max_seq_len=16)
    tokens = np.random.default_rng(0).integers(0, 32, 16 * 11 + 1).astype(np.int32)
    loss_T = loss_by_position(lm, tokens, max_windows=10)  # one short batch of 2 after a full one of 8
    chex.assert_shape(loss_T, (16,))
    tracer = Tracer(lm)
    expected = np.mean([-tracer.trace(tokens[w * 16 : (w + 1) * 16].tolist()).logprob_T[1:] for w in range(10)], 0)
    np.testing.assert_allclose(loss_T[:15], expected, atol=1e-5)
    with pytest.raises(EvalError, match="at least 17"):
        loss_by_position(lm, tokens[:16])


def test_positions_view_draws_the_curve_of_the_validation_split(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["inspect", "positions", "--checkpoint", str(run_dir), "--out", str(out), "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["context"] == 32 and len(numbers["loss_by_position"]) == 32
    assert [p.name for p in out.iterdir()] == ["positions.png"]


def test_unknown_run_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", "tokens", "--checkpoint", str(tmp_path / "nope"), "--prompt", "a"]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_plot_draws_runs_side_by_side_with_their_table(run_dir, tmp_path, capsys):
    out = tmp_path / "runs.png"
    assert main(["plot", str(run_dir), str(run_dir), "--out", str(out), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert out.read_bytes()[:4] == b"\x89PNG"
    rows = read_metrics(run_dir)
    best = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
    assert table[0]["best_val_loss"] == best["val_loss"] and table[0]["best_val_step"] == best["step"]
    assert table[0]["steps"] == 4 and table[0]["params"] > 0
    assert table[0]["best_val_bpb"] == min(r["val_bpb"] for r in rows if "val_loss" in r)
    # a run whose rows have no bits per byte (written before them, or by a tokenizer without byte lengths)
    older = shutil.copytree(run_dir, tmp_path / "older")
    stripped = [{k: v for k, v in r.items() if k not in ("val_bpb", "val_bpc")} for r in rows]
    (older / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert main(["plot", str(run_dir), str(older), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[-1] == "-"
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 2
    assert "not a run folder with metrics" in capsys.readouterr().err


def test_inspect_compare_prints_each_run_and_draws_them_side_by_side(run_dir, tmp_path, capsys):
    out = tmp_path / "compare"
    args = ["inspect", "compare", str(run_dir), str(run_dir), "--prompt", "To be", "--layer", "1", "--json"]
    assert main(args + ["--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config_diff"] == [] and [r["run"] for r in result["runs"]] == ["run", "run"]
    assert result["runs"][0]["next"] == result["runs"][1]["next"] and result["runs"][0]["step"] == 4
    assert len(result["runs"][0]["attention"]) == len("To be") and len(result["runs"][0]["heads"]) == 4
    assert [p.name for p in out.iterdir()] == ["compare.png"]
    assert main(["inspect", "compare", str(run_dir), str(run_dir), "--prompt", "To be", "--out", str(out)]) == 0
    assert "the runs' configs are the same" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "RUN", "--prompt", "a"], "takes 2 to 4 run folders"),
        (["compare", "RUN", "RUN", "--checkpoint", "RUN", "--prompt", "a"], "and --checkpoint"),
        (["compare", "RUN", "RUN"], "needs --prompt"),
        (["tokens", "--prompt", "a"], "takes one run as --checkpoint RUN_DIR"),
        (["tokens", "RUN", "--checkpoint", "RUN", "--prompt", "a"], "are for inspect compare"),
    ],
)
def test_inspect_compare_and_the_views_say_how_runs_are_named(run_dir, capsys, args, message):
    assert main(["inspect", *[str(run_dir) if a == "RUN" else a for a in args]]) == 2
    assert message in capsys.readouterr().err


def test_inspect_route_returns_the_trace_as_json(client):
    response = client.post("/v1/inspect", json={"model": "tiny", "prompt": "hello world", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "inspection" and body["num_layers"] == 2 and body["num_heads"] == 4
    assert [t["text"] for t in body["tokens"]] == list("hello world")
    assert body["tokens"][0]["logprob"] is None and len(body["tokens"][1]["top"]) == 3
    attention = np.asarray(body["attention"], np.float64)
    chex.assert_shape(attention, (2, 4, 11, 11))
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-3)
    assert len(body["lens"]["top"]) == 2 and len(body["lens"]["top"][0]) == 11
    assert body["lens"]["next_rank"][0][-1] is None
    assert {row["layer"] for row in body["heads"]} == {0, 1} and len(body["heads"]) == 8
    only = client.post("/v1/inspect", json={"model": "tiny", "prompt": [1, 2, 3], "include": ["tokens"]}).json()
    assert "attention" not in only and "lens" not in only and [t["id"] for t in only["tokens"]] == [1, 2, 3]
    assert 'route="/v1/inspect"' in client.get("/metrics").text


@pytest.mark.parametrize(
    "body, param, needle",
    [
        ({"model": "tiny", "prompt": "a" * 41}, "prompt", "at most 40"),
        ({"model": "tiny", "prompt": ""}, "prompt", "empty"),
        ({"model": "tiny", "prompt": "ab", "include": ["mind"]}, "include", "tokens, attention, lens, heads"),
        ({"model": "tiny", "prompt": "ab", "top_k": 50}, "top_k", "top_k"),
        ({"model": "tiny", "prompt": [1, 99]}, "prompt", "token id 99"),
        ({"model": "tiny", "prompt": 3}, "prompt", "string or an array"),
    ],
)
def test_inspect_route_errors_name_the_field(client, body, param, needle):
    response = client.post("/v1/inspect", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and needle in error["message"]
    assert client.post("/v1/inspect", json={"model": "nope", "prompt": "a"}).status_code == 404


@pytest.mark.slow
def test_a_two_layer_model_trained_on_repeated_sequences_grows_an_induction_head():
    """The classic finding (Olsson et al., 2022): two attention layers learn to copy what followed the previous
    occurrence of the current token; a fresh model has no such head, and ablating the trained one's induction heads
    takes the copying away."""
    import optax

    from mulm_jax.config import Config
    from mulm_jax.data.tokenizer import CharTokenizer
    from mulm_jax.infer import LoadedModel
    from mulm_jax.models import build_model

    cfg = load_config(
        "configs/shakespeare_char.yaml",
        [
            "model.vocab_size=64",
            "model.d_model=64",
            "model.num_layers=2",
            "model.num_heads=2",
            "model.d_ff=64",
            "model.max_seq_len=32",
            "model.positional=rope",
        ],
    ).model
    model = build_model(cfg)
    tokenizer = CharTokenizer([chr(48 + i) for i in range(64)])
    half = 16
    rng = np.random.default_rng(0)

    def batch():
        first = rng.integers(0, 64, (32, half))
        return jnp.asarray(np.concatenate([first, first], axis=1), jnp.int32)

    params = model.init(jax.random.key(0), batch()[:, :-1])["params"]

    def roles(p):
        lm = LoadedModel(model=model, params=p, tokenizer=tokenizer, config=Config(model=cfg), step=0, run_dir=None)
        tracer = Tracer(lm)
        return head_roles(tracer, tracer.trace("0123", lens=False).attention_LxHxTxT).induction_LxH

    assert roles(params).max() < 0.1
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, ids_BxT):
        def loss(p):
            logits = model.apply({"params": p}, ids_BxT[:, :-1])
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), ids_BxT[:, 1:, None], -1)[..., 0]
            return nll[:, half - 1 :].mean()  # the second copy: predictable only by looking back

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(400):
        params, opt_state = step(params, opt_state, batch())
    induction = roles(params)
    assert induction.max() > 0.5

    # Ablating the heads the table marks as induction heads costs the repeated half its predictability, each of them
    # more than any other head does; a random other head changes it by next to nothing. (Both heads of layer 1
    # become induction heads and share the work, so one alone costs less than the two together.)
    lm = LoadedModel(model=model, params=params, tokenizer=tokenizer, config=Config(model=cfg), step=0, run_dir=None)
    tracer = Tracer(lm)
    ids = induction_sequence(64, half, seed=7).tolist()

    def repeated_half_logprob(heads) -> float:
        logits = tracer.run_with_cache(ids, ["logits"], edits=head_edits(tracer, heads))["logits"]
        logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
        return float(np.mean([logp[t - 1, ids[t]] for t in range(half + 1, 2 * half)]))

    clean = repeated_half_logprob([])
    marked = [(int(layer), int(head)) for layer, head in zip(*np.nonzero(induction > 0.5))]
    others = [(layer, head) for layer in range(2) for head in range(2) if (layer, head) not in marked]
    drop = {head: clean - repeated_half_logprob([head]) for head in marked + others}
    assert clean - repeated_half_logprob(marked) > 2.0, (clean, drop)
    assert min(drop[h] for h in marked) > 5 * max(drop[h] for h in others), drop
    other = others[np.random.default_rng(0).integers(len(others))]
    assert abs(drop[other]) < 0.05, drop


@pytest.mark.parametrize(
    "view, args, picture, keys",
    [
        (
            "ablate",
            ["--prompt", "To be, or not", "--mode", "mean"],
            "ablate.png",
            {"delta_logprob", "logprob", "token"},
        ),
        (
            "patch",
            ["--clean", "To be, or not", "--corrupt", "To see or not"],
            "patch.png",
            {"restored", "patched_logprob"},
        ),
        ("attribute", ["--prompt", "To be, or not", "--token", "t"], "attribute.png", {"components", "logit", "total"}),
    ],
)
def test_intervention_views_draw_their_table_and_print_the_routes_json(
    run_dir, tmp_path, capsys, view, args, picture, keys
):
    out = tmp_path / "out"
    assert main(["inspect", view, "--checkpoint", str(run_dir), *args, "--out", str(out), "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert keys <= set(numbers)
    assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if view == "ablate":
        chex.assert_shape(np.asarray(numbers["delta_logprob"]), (2, 2))
    elif view == "patch":
        chex.assert_shape(np.asarray(numbers["restored"], np.float64), (2, 13))
    else:
        assert numbers["token"]["text"] == "t"
        assert abs(sum(c["logit"] for c in numbers["components"]) - numbers["logit"]) < 1e-4


def test_activations_view_prints_the_cached_values_at_a_position(run_dir, capsys):
    from mulm_jax.infer import load_model

    assert main(["inspect", "activations", "--checkpoint", str(run_dir)]) == 0
    listed = capsys.readouterr().out
    assert "blocks.1.attn.pattern" in listed and "HxTxT" in listed
    assert (
        main(
            [
                "inspect",
                "activations",
                "--checkpoint",
                str(run_dir),
                "--prompt",
                "To be",
                "--names",
                "blocks.0.attn.q,blocks.*.attn.pattern",
                "--position",
                "-2",
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["position"] == 3 and [t["text"] for t in printed["tokens"]] == list("To be")
    values = printed["activations"]
    assert list(values) == ["blocks.0.attn.q", "blocks.0.attn.pattern", "blocks.1.attn.pattern"]
    cache = Tracer(load_model(run_dir)).run_with_cache("To be")
    assert values["blocks.0.attn.q"]["letters"] == "HxDh" and values["blocks.1.attn.pattern"]["letters"] == "HxT"
    np.testing.assert_allclose(values["blocks.0.attn.q"]["values"], cache["blocks.0.attn.q"][3], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        values["blocks.1.attn.pattern"]["values"], cache["blocks.1.attn.pattern"][:, 3], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "view, args, message",
    [
        (
            "activations",
            ["--prompt", "To be", "--names", "blocks.0.attn.qq"],
            "unknown activation name 'blocks.0.attn.qq'",
        ),
        ("activations", ["--prompt", "To be", "--names", "logits", "--position", "5"], "position 5 is out of range"),
        ("patch", ["--clean", "To be"], "needs --clean TEXT and --corrupt TEXT"),
        ("patch", ["--clean", "To be", "--corrupt", "To bee"], "the clean prompt has 5 tokens and the corrupt one 6"),
        ("ablate", ["--prompt", "To be", "--token", "To"], "'To' is 2 tokens"),
        ("attribute", ["--prompt", "To be", "--position", "-9"], "position -9 is out of range"),
    ],
)
def test_bad_intervention_arguments_say_what_is_allowed_and_write_nothing(
    run_dir, tmp_path, capsys, view, args, message
):
    out = tmp_path / "out"
    assert main(["inspect", view, "--checkpoint", str(run_dir), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_activations_route_answers_names_at_a_position_and_with_heads_ablated(client):
    body = {"model": "tiny", "prompt": "hello world", "names": ["blocks.1.attn.z", "logits"], "position": 4}
    plain = client.post("/v1/inspect/activations", json=body).json()
    assert plain["object"] == "activations" and plain["position"] == 4 and len(plain["tokens"]) == 11
    assert plain["names"]["blocks.0.attn.scores"] == "HxTxT"
    z = np.asarray(plain["activations"]["blocks.1.attn.z"]["values"])
    chex.assert_shape(z, (4, 4))
    assert plain["activations"]["logits"]["letters"] == "V"
    ablated = client.post("/v1/inspect/activations", json={**body, "ablate": [{"layer": 1, "head": 2}]}).json()
    z_ablated = np.asarray(ablated["activations"]["blocks.1.attn.z"]["values"])
    np.testing.assert_array_equal(z_ablated[2], 0.0)
    np.testing.assert_allclose(np.delete(z_ablated, 2, axis=0), np.delete(z, 2, axis=0), atol=1e-6)
    assert not np.allclose(ablated["activations"]["logits"]["values"], plain["activations"]["logits"]["values"])


def test_intervention_routes_answer_their_tables(client):
    ablation = client.post("/v1/inspect/ablate", json={"model": "tiny", "prompt": "hello world"}).json()
    chex.assert_shape(np.asarray(ablation["delta_logprob"]), (2, 4))
    patching = client.post(
        "/v1/inspect/patch", json={"model": "tiny", "clean": "hello world", "corrupt": "hello there"}
    ).json()
    restored = np.asarray(patching["restored"], np.float64)
    chex.assert_shape(restored, (2, 11))
    np.testing.assert_allclose(restored[:, :6], 0.0, atol=1e-5)  # the prompts agree there: patching changes nothing
    attribution = client.post("/v1/inspect/attribute", json={"model": "tiny", "prompt": "hello", "token": 5}).json()
    assert attribution["token"]["id"] == 5
    assert abs(sum(c["logit"] for c in attribution["components"]) - attribution["logit"]) < 1e-4


@pytest.mark.parametrize(
    "path, body, param, needle",
    [
        ("activations", {"prompt": "ab", "names": ["blocks.7.attn.q"]}, "names", "unknown activation name"),
        ("activations", {"prompt": "ab", "position": 2}, "position", "positions 0 to 1"),
        ("activations", {"prompt": "ab", "ablate": [{"layer": 0, "head": 4}]}, "ablate.head", "heads 0 to 3"),
        ("ablate", {"prompt": "ab", "mode": "half"}, "mode", "zero"),
        ("ablate", {"prompt": "ab", "token": "abc"}, "token", "3 tokens"),
        ("patch", {"clean": "ab", "corrupt": "abc"}, "corrupt", "same number of tokens"),
        ("patch", {"clean": "a" * 41, "corrupt": "ab"}, "clean", "at most 40"),
        ("attribute", {"prompt": "ab", "position": -3}, "position", "out of range"),
    ],
)
def test_intervention_route_errors_name_the_field(client, path, body, param, needle):
    response = client.post(f"/v1/inspect/{path}", json={"model": "tiny", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and needle in error["message"], error
