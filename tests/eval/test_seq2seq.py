"""eval seq2seq: exact match, and sacrebleu's chrF and BLEU, of the greedy outputs for a data set's held-out pairs;
an encoder-decoder trained on pairs reads a prompt as its source, then its start token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from support import pairs_run
from mulm_jax.__main__ import main as cli
from mulm_jax.config import DataConfig
from mulm_jax.data import assemble, read_manifest
from mulm_jax.eval.seq2seq import held_out_pairs, score
from mulm_jax.infer import Engine, SamplingParams, load_model


def test_scores_are_exact_match_and_sacrebleus_corpus_chrf_and_bleu():
    hypotheses, references = ["2021-03-03", "1999-12-01", "2000-01-01"], ["2021-03-03", "1999-12-02", "2000-01-01"]
    result = score(hypotheses, references)
    assert result["examples"] == 3 and result["exact_match"] == pytest.approx(200 / 3)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert "version:" in result["chrf_signature"] and "tok:13a" in result["bleu_signature"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    return pairs_run(tmp_path_factory.mktemp("s2s"))


def test_a_prompt_to_an_encoder_decoder_trained_on_pairs_is_its_source_then_the_start_token(pairs):
    folder, run = pairs
    lm = load_model(run)
    start = read_manifest(folder)["pairs"]["decoder_start_id"]
    assert lm.decoder_start == start == lm.tokenizer.eos_id
    engine = Engine(lm, slots=1)
    assert engine.encode_prompt("ab ij", 4) == lm.tokenizer.encode("ab ij") + [start]
    assert engine.encode_prompt(engine.tokenize("ab ij"), 4) == lm.tokenizer.encode("ab ij") + [start]  # once


def test_eval_seq2seq_scores_the_engines_greedy_outputs_for_the_held_out_sources(pairs, capsys):
    folder, run = pairs
    assert cli(["eval", "seq2seq", "--checkpoint", str(run), "--json", "--show", "10"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lm = load_model(run)
    examples = held_out_pairs(folder, lm.tokenizer)
    longest = read_manifest(folder)["pairs"]["longest"]["val"]["trained"]
    with Engine(lm, slots=2) as engine:
        outputs = [
            engine.generate(e.prompt_ids, SamplingParams(max_tokens=longest, temperature=0.0)).text for e in examples
        ]
    expected = score(outputs, [e.target for e in examples])
    assert {k: result[k] for k in expected} == expected and result["examples"] == 3
    assert [w["output"] for w in result["wrong"]] == [o for o, e in zip(outputs, examples) if o != e.target]
    assert all(w["target"] == w["prompt"].split()[1] + " " + w["prompt"].split()[0] for w in result["wrong"])


def test_eval_seq2seq_needs_a_data_set_of_pairs(pairs, tmp_path, capsys):
    _, run = pairs
    (tmp_path / "t.txt").write_text("ab cd ef gh ij kl mn " * 20)
    text = assemble(
        DataConfig(sources=(str(tmp_path / "t.txt"),), tokenizer=str(run), out_dir=str(tmp_path / "datasets"))
    ).path
    assert cli(["eval", "seq2seq", "--checkpoint", str(run), "--data", str(text)]) == 2
    assert f"data set {text} holds text; eval seq2seq scores a data set of pairs" in capsys.readouterr().err
