"""eval recall: recall sequences of a length, accuracy bucketed by distance and depth (against a stand-in model that
answers right at some positions), its errors, and the command on a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mulm_jax.__main__ import main
from mulm_jax.data import DataError, recall
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.eval import EvalError, recall_accuracy
from mulm_jax.eval.recall import LONGEST_DISTANCE, bucket_index, distance_edges, recall_sequence
from test_eval import fake_run

TOK = CharTokenizer(sorted(recall.CHARS), eos=True)


def test_buckets_are_half_open_but_the_last_keeps_its_top_edge():
    edges = distance_edges(40)
    assert edges == [1, 8, 16, 32, 64]
    assert bucket_index(np.array([0, 1, 7, 8, 31, 32, 64, 65]), edges).tolist() == [-1, 0, 0, 1, 2, 3, 3, -1]


def test_sequences_pack_the_sources_documents_and_keep_the_queries_answered_inside():
    ids = recall.token_ids(TOK)
    seq = recall_sequence(np.random.default_rng(0), 64, ids, TOK.eos_id)
    text = TOK.decode([i for i in seq.ids.tolist() if i != TOK.eos_id])
    assert len(seq.ids) == 65 and seq.ids.tolist().count(TOK.eos_id) >= 2  # two documents or more, each ended
    assert np.all(seq.query_positions + 1 <= 64) and np.all(seq.pair_positions < seq.query_positions)
    key, value = seq.ids[seq.query_positions], seq.ids[seq.query_positions + 1]
    assert np.array_equal(seq.ids[seq.pair_positions], key) and np.array_equal(seq.ids[seq.pair_positions + 1], value)
    assert "|" in text and max(seq.query_positions - seq.pair_positions) <= LONGEST_DISTANCE


def test_accuracy_by_distance_and_depth_of_a_model_that_answers_only_near_pairs():
    near = 16  # the stand-in answers a query right when its pair is fewer than this many tokens back
    lengths, trials, ids = [40, 64], 6, recall.token_ids(TOK)
    rng = np.random.default_rng(4)  # the same sequences, drawn as recall_accuracy draws them
    drawn = {n: [recall_sequence(rng, n, ids, TOK.eos_id) for _ in range(trials)] for n in lengths}
    by_ids = {tuple(s.ids[:-1].tolist()): s for seqs in drawn.values() for s in seqs}

    def answers_near_pairs(inputs_BxT, targets_BxT):
        greedy = np.full(targets_BxT.shape, -1)
        for row, inputs in enumerate(inputs_BxT.tolist()):
            seq = by_ids[tuple(inputs)]
            near_queries = seq.query_positions[seq.query_positions - seq.pair_positions < near]
            greedy[row, near_queries] = targets_BxT[row, near_queries]
        return np.zeros(targets_BxT.shape), greedy

    result = recall_accuracy(answers_near_pairs, TOK, lengths, trials=trials, seed=4, batch=4)
    for i, length in enumerate(lengths):
        distances = np.concatenate([s.query_positions - s.pair_positions for s in drawn[length]])
        depths = np.concatenate([s.pair_positions / length for s in drawn[length]])
        hits = distances < near
        assert result["queries"][i] == distances.size
        assert result["by_length"][i] == pytest.approx(hits.mean())
        for b, (lo, hi) in enumerate(zip(result["distance_edges"], result["distance_edges"][1:])):
            inside = (distances >= lo) & (distances < hi)
            assert result["by_distance"][i][b] == (float(hi <= near) if inside.any() else None)
        for d, lo in enumerate(result["depth_edges"][:-1]):
            inside = (depths >= lo - 1e-9) & (depths < lo + 0.1 - 1e-9)
            assert result["by_depth"][i][d] == (pytest.approx(hits[inside].mean()) if inside.any() else None)
    cells = [v for grid in result["by_depth_distance"] for row in grid for v in row if v is not None]
    assert cells and set(cells) == {0.0, 1.0}  # each distance bucket all right or all wrong, at every depth


def test_lengths_too_short_for_a_document_are_refused():
    with pytest.raises(EvalError, match="recall length 20 is too short: expected at least 30"):
        recall_accuracy(lambda i, t: (t, t), TOK, [64, 20], trials=1)


def test_a_tokenizer_without_recall_characters_is_refused_naming_them():
    with pytest.raises(DataError, match=r"no token of its own for '0', '1', .*'9'.*--source recall"):
        recall_accuracy(lambda i, t: (t, t), CharTokenizer(sorted(set(recall.CHARS) - set("0123456789"))), [64], 1)


def test_eval_recall_prints_tables_writes_json_and_a_heatmap(tmp_path, capsys):
    run = fake_run(tmp_path / "run", sorted(recall.CHARS), max_seq_len=64, positional="learned")
    args = ["eval", "recall", "--checkpoint", str(run), "--trials", "2"]
    assert main(args + ["--lengths", "40,64", "--plot", str(tmp_path / "recall.png")]) == 0
    printed = capsys.readouterr().out
    assert "recall accuracy of" in printed and "by distance" in printed and "by depth" in printed
    assert (tmp_path / "recall.png").stat().st_size > 10_000
    assert main(args + ["--lengths", "40,64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lengths"] == [40, 64] and result["step"] == 3
    assert 2 * 3 <= result["queries"][0] < result["queries"][1] <= 2 * 64 // 3  # a query is 3 tokens at least
    assert main(args + ["--lengths", "64,128"]) != 0
    assert "learned position table has 64 trained rows, so it cannot score a context of 128" in capsys.readouterr().err
