"""Evaluation past the training context: sliding-window perplexity scores each token once and equals the plain
mean loss when windows do not overlap; one compilation per window length; passkey text and scoring; the passkey
data source; clear errors for learned tables, missing digits and bad shares."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from support import loaded, random_ids
from mulm_jax.__main__ import main as cli
from mulm_jax.config import Config, DataConfig, dump_config
from mulm_jax.data import DataError, Tokenizer, assemble
from mulm_jax.data import passkey
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.eval import (
    EvalError,
    Window,
    WindowScorer,
    answer_hits,
    check_context,
    load_for_eval,
    passkey_accuracy,
    passkey_sequence,
    sliding_perplexity,
    window_plan,
)
from mulm_jax.train.checkpoint import Checkpoints
from mulm_jax.train.step import TrainState

PASSKEY_CHARS = sorted(set("".join(passkey.FILLER) + passkey.QUESTION + passkey.key_line("0123456789")))


def fake_run(folder: Path, chars: list[str] = PASSKEY_CHARS, **model) -> Path:
    """A run folder (config, tokenizer, one checkpoint) of a tiny model with random weights, written without
    training; its character tokenizer covers passkey text (or `chars`)."""
    lm = loaded(vocab_size=len(chars), **model)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(Config(model=lm.config.model)))
    CharTokenizer(chars).save(folder)
    checkpoints = Checkpoints(folder, keep=1)
    checkpoints.save(TrainState(step=np.int32(3), params=lm.params, opt_state={}, rng=np.zeros(2, np.uint32)), {})
    checkpoints.close()
    return folder


@pytest.mark.parametrize(
    "num_tokens, context, stride", [(101, 16, 8), (101, 16, 5), (101, 16, 16), (60, 16, 7), (10, 16, 8), (17, 16, 1)]
)
def test_windows_score_every_target_once_with_at_least_context_minus_stride_before_it(num_tokens, context, stride):
    plan, T = window_plan(num_tokens, context, stride)
    scored = [t for w in plan for t in range(w.start + w.first, w.start + T)]
    assert scored == list(range(num_tokens - 1))
    assert T == min(context, num_tokens - 1) and plan[0] == Window(0, 0)
    assert all(w.start + T <= num_tokens - 1 and w.first >= T - stride for w in plan[1:])


def test_stride_equal_to_the_context_is_the_mean_token_loss_of_the_windows():
    lm = loaded(positional="rope", max_seq_len=16)
    tokens = random_ids(1, 5 * 16 + 1, seed=3)[0]
    logits = jax.jit(lm.model.apply)({"params": lm.params}, tokens[:-1].reshape(5, 16))
    direct = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[1:].reshape(5, 16)).mean()
    scorer = WindowScorer(lm)
    result = sliding_perplexity(scorer, tokens, 16, 16, batch=2, buckets=4)
    assert result["tokens"] == 80 and result["stride"] == 16
    np.testing.assert_allclose(result["loss"], float(direct), rtol=1e-5)
    np.testing.assert_allclose(result["ppl"], np.exp(float(direct)), rtol=1e-5)
    assert [(b["start"], b["end"], b["tokens"]) for b in result["by_position"]] == [
        (0, 4, 20),
        (4, 8, 20),
        (8, 12, 20),
        (12, 16, 20),
    ]
    np.testing.assert_allclose(np.mean([b["loss"] for b in result["by_position"]]), result["loss"], rtol=1e-5)
    assert scorer.traces == 1  # five windows in three batches (the last padded): one compilation


def test_windows_of_one_length_compile_once_and_a_shorter_text_gives_shorter_windows():
    lm = loaded(positional="alibi", max_seq_len=16)
    scorer = WindowScorer(lm)
    long = sliding_perplexity(scorer, random_ids(1, 200, seed=1)[0], 32, batch=4)
    assert (long["context"], long["stride"], long["tokens"], scorer.traces) == (32, 16, 199, 1)
    short = sliding_perplexity(scorer, random_ids(1, 10, seed=1)[0], 32, batch=4)
    assert (short["context"], short["tokens"], scorer.traces) == (9, 9, 2)


def test_bad_strides_and_texts_are_refused():
    with pytest.raises(EvalError, match=r"stride=17 must be in \[1, context=16\]: a longer stride would skip"):
        window_plan(100, 16, 17)
    with pytest.raises(EvalError, match="the text has 1 tokens: at least 2"):
        window_plan(1, 16, 8)


def test_a_learned_table_cannot_score_past_its_length(tmp_path):
    run = fake_run(tmp_path / "run", positional="learned")
    with pytest.raises(
        EvalError,
        match="learned position table has 16 trained rows, so it cannot score a context of 32: .*--extend-positions",
    ):
        check_context(load_for_eval(run).config.model, 32)
    with pytest.raises(
        EvalError, match="learned position table has 16 trained rows, so it cannot score a context of 64"
    ):
        load_for_eval(run, ["model.max_seq_len=64"])
    with pytest.raises(EvalError, match=r"sinusoidal table has model.max_seq_len=16 rows.*--set model.max_seq_len=32"):
        check_context(loaded(positional="sinusoidal").config.model, 32)
    check_context(loaded(positional="rope").config.model, 64)  # RoPE computes any position: zero-shot is allowed


def test_overrides_stretch_rope_from_the_trained_context(tmp_path):
    run = fake_run(tmp_path / "run", positional="rope")
    plain = load_for_eval(run)
    yarn = load_for_eval(run, ["model.max_seq_len=64", "model.rope_scaling.type=yarn", "model.rope_scaling.factor=4"])
    assert yarn.config.model.rope_scaling.original_max_seq_len == 16 and yarn.config.model.max_seq_len == 64
    ids = random_ids(1, 16, seed=2)
    assert not np.allclose(
        jax.jit(plain.model.apply)({"params": plain.params}, ids),
        jax.jit(yarn.model.apply)({"params": yarn.params}, ids),
    )
    with pytest.raises(EvalError, match=r"do not fit the model of --set model.d_ff=48 \(3 differ\)"):
        load_for_eval(run, ["model.d_ff=48"])


def test_passkey_sequences_have_the_length_and_the_key_at_its_depth():
    tok = CharTokenizer(PASSKEY_CHARS)
    line = passkey.key_line("12345")
    for length, depth in [(128, 0.0), (128, 0.5), (300, 1.0), (300, 0.25)]:
        ids, start = passkey_sequence(tok, length, depth, "12345")
        text = tok.decode(ids)
        assert len(ids) == length + 1 and start == length + 1 - 5
        assert text.endswith(passkey.QUESTION + "12345") and line in text
        before = text.index(line)
        filler = length + 1 - len(line) - len(passkey.QUESTION) - 5
        assert abs(before - depth * filler) <= max(len(s) for s in passkey.FILLER)
    with pytest.raises(EvalError, match="passkey length 40 is too short"):
        passkey_sequence(tok, 40, 0.5, "12345")


def test_passkey_scoring_on_hand_made_model_outputs():
    sequences = np.array([[9, 9, 1, 2, 3], [9, 9, 1, 2, 3], [9, 9, 1, 2, 3], [8, 4, 5, 6, 7]])
    starts = np.array([2, 2, 2, 3])  # the answers: [1, 2, 3] and [6, 7]
    greedy = np.array(
        [
            [0, 1, 2, 3],  # every answer id predicted (what precedes it does not count)
            [0, 1, 2, 0],  # the last digit wrong
            [0, 2, 3, 3],  # the right digits one step late
            [0, 0, 6, 7],
        ]
    )
    assert answer_hits(greedy, sequences, starts).tolist() == [True, False, False, True]


def test_passkey_accuracy_by_length_and_depth_from_a_hand_made_model():
    tok = CharTokenizer(PASSKEY_CHARS)

    def knows_the_key_unless_it_is_at_the_start(inputs_BxT, targets_BxT):
        greedy = targets_BxT.copy()
        at_start = np.array([tok.decode(row).index("The pass key") < 25 for row in inputs_BxT])
        greedy[at_start, -1] = -1  # the last digit of the answer is missed when the key line opens the text
        return np.zeros(targets_BxT.shape), greedy

    result = passkey_accuracy(knows_the_key_unless_it_is_at_the_start, tok, [160, 256], [0.0, 0.5, 1.0], trials=3)
    assert result["accuracy"] == [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    assert result["by_length"] == pytest.approx([2 / 3, 2 / 3])


def test_a_tokenizer_without_digits_cannot_take_the_passkey_test():
    no_digits = CharTokenizer(sorted(set(PASSKEY_CHARS) - set("0123456789")))
    with pytest.raises(
        DataError,
        match="the tokenizer has no token for '0', '1', .*'9': passkey text needs the digits .*--source passkey",
    ):
        passkey_accuracy(lambda i, t: (t, t), no_digits, [128], [0.5], trials=1)


def test_passkey_mixes_into_a_data_set_as_a_share_of_its_characters(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    cfg = DataConfig(sources=(str(corpus), "passkey:0.2"), out_dir=str(tmp_path / "out"))
    m = assemble(cfg).manifest
    generated = m["sources"][1]
    assert (generated["generated"], generated["share"], generated["files"]) == ("passkey", 0.2, [])
    total = m["train_chars"] + m["val_chars"]
    assert 0.19 < 1 - len(corpus.read_text()) / total < 0.21
    tok = Tokenizer.load(Path(cfg.out_dir) / m["version"])
    passkey.check_covers(tok)
    again = assemble(cfg)
    assert again.reused and again.manifest["version"] == m["version"]
    other = assemble(DataConfig(sources=(str(corpus), "passkey:0.3"), out_dir=cfg.out_dir)).manifest["version"]
    alone = assemble(DataConfig(sources=("passkey",), out_dir=cfg.out_dir)).manifest
    assert len({m["version"], other, alone["version"]}) == 3
    assert passkey.ALONE_CHARS <= alone["train_chars"] + alone["val_chars"] < passkey.ALONE_CHARS + 200


def test_bits_per_byte_and_per_character_are_the_summed_loss_over_the_scored_texts_length(tmp_path, capsys):
    text = "Où est le café? Le thé est là, 中文 aussi.\n" * 5
    run = fake_run(tmp_path / "run", chars=sorted(set(text)), positional="rope")
    (tmp_path / "text.txt").write_text(text)
    # one window holds the whole text (RoPE computes any position), so each token sees all of the text before it
    assert (
        cli(
            [
                "eval",
                "perplexity",
                "--checkpoint",
                str(run),
                "--text-file",
                str(tmp_path / "text.txt"),
                "--context",
                "256",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    lm = load_for_eval(run)
    ids = np.asarray(lm.tokenizer.encode(text))
    logits = jax.jit(lm.model.apply)({"params": lm.params}, ids[None, :-1])
    loss_sum = float(optax.softmax_cross_entropy_with_integer_labels(logits, ids[None, 1:]).sum())
    scored = text[1:]  # the first token is only context
    assert (result["tokens"], result["bytes"], result["chars"]) == (len(ids) - 1, len(scored.encode()), len(scored))
    np.testing.assert_allclose(result["bits_per_byte"], loss_sum / len(scored.encode()) / np.log(2), rtol=1e-4)
    np.testing.assert_allclose(result["bits_per_char"], loss_sum / len(scored) / np.log(2), rtol=1e-4)
    assert (
        cli(
            [
                "eval",
                "perplexity",
                "--checkpoint",
                str(run),
                "--text-file",
                str(tmp_path / "text.txt"),
                "--context",
                "256",
            ]
        )
        == 0
    )
    assert (
        f"{result['bits_per_byte']:.4f} bits per byte, {result['bits_per_char']:.4f} per character"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "sources, message",
    [
        (("passkey:1.5",), r"source 'passkey:1.5': the share after ':' must be a number in \(0, 1\), e.g. passkey:0.2"),
        (("passkey:half",), r"must be a number in \(0, 1\)"),
        (("passkey:0.2",), "a share of the other sources' text, but they hold none; give 'passkey' alone"),
    ],
)
def test_bad_passkey_shares_are_refused(tmp_path, sources, message):
    with pytest.raises(DataError, match=message):
        assemble(DataConfig(sources=sources, out_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_eval_commands_print_json(tmp_path, capsys):
    run = fake_run(tmp_path / "run", positional="rope")
    text = tmp_path / "text.txt"
    text.write_text("".join(passkey.FILLER) * 8)
    assert (
        cli(
            [
                "eval",
                "perplexity",
                "--checkpoint",
                str(run),
                "--text-file",
                str(text),
                "--context",
                "32",
                "--by-position",
                "--buckets",
                "2",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["context"], result["stride"], result["tokens"]) == (32, 16, len(text.read_text()) - 1)
    assert [b["start"] for b in result["by_position"]] == [0, 16] and result["ppl"] > 1
    assert (
        cli(
            [
                "eval",
                "passkey",
                "--checkpoint",
                str(run),
                "--lengths",
                "112,128",
                "--depths",
                "0,1",
                "--trials",
                "2",
                "--set",
                "model.max_seq_len=128",
                "model.rope_scaling.type=linear",
                "model.rope_scaling.factor=8",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["lengths"] == [112, 128] and np.shape(result["accuracy"]) == (2, 2)
    learned = fake_run(tmp_path / "learned", positional="learned")
    assert cli(["eval", "passkey", "--checkpoint", str(learned), "--lengths", "16,64"]) == 2
    assert "cannot score a context of 64" in capsys.readouterr().err
