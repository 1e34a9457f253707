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
from mulm_jax.eval.recall import bucket_index, distance_edges, pairs_for
from test_eval import fake_run

TOK = CharTokenizer(sorted(recall.CHARS), eos=True)


def test_buckets_are_half_open_but_the_last_keeps_its_top_edge():
    edges = distance_edges(40)
    assert edges == [1, 8, 16, 32, 64]
    assert bucket_index(np.array([0, 1, 7, 8, 31, 32, 64, 65]), edges).tolist() == [-1, 0, 0, 1, 2, 3, 3, -1]


def test_accuracy_by_distance_and_depth_of_a_model_that_answers_only_near_pairs():
    near = 32  # the stand-in answers a query right when its pair is fewer than this many tokens back
    keys = {TOK.encode(k)[0] for k in recall.KEYS}

    def answers_near_pairs(inputs_BxT, targets_BxT):
        greedy = np.full(targets_BxT.shape, -1)
        for row, ids in enumerate(inputs_BxT.tolist()):
            q = ids.index(TOK.encode("|")[0]) + 1
            while q < len(ids) and ids[q] in keys:  # each query's key, its pair the key's first occurrence
                if q - ids.index(ids[q]) < near:
                    greedy[row, q] = targets_BxT[row, q]
                q += 3
        return np.zeros(targets_BxT.shape), greedy

    result = recall_accuracy(answers_near_pairs, TOK, [35, 64], trials=6, seed=4, batch=4)
    rng = np.random.default_rng(4)  # the same sequences, drawn as recall_accuracy draws them
    for i, length in enumerate([35, 64]):
        layouts = [recall.random_layout(rng, pairs_for(length)) for _ in range(6)]
        distances = np.concatenate([lay.distances for lay in layouts])
        depths = np.concatenate([lay.pair_positions[lay.query_pairs] / length for lay in layouts])
        hits = distances < near
        assert result["queries"][i] == distances.size == 6 * pairs_for(length)
        assert result["by_length"][i] == pytest.approx(hits.mean())
        for b, (lo, hi) in enumerate(zip(result["distance_edges"], result["distance_edges"][1:])):
            inside = (distances >= lo) & (distances < hi)
            assert result["by_distance"][i][b] == (float(hi <= near) if inside.any() else None)
        for d, lo in enumerate(result["depth_edges"][:-1]):
            inside = (depths >= lo - 1e-9) & (depths < lo + 0.1 - 1e-9)
            assert result["by_depth"][i][d] == (pytest.approx(hits[inside].mean()) if inside.any() else None)
    cells = [v for grid in result["by_depth_distance"] for row in grid for v in row if v is not None]
    assert cells and set(cells) == {0.0, 1.0}  # each distance bucket all right or all wrong, at every depth


@pytest.mark.parametrize("length", [10, 312])
def test_lengths_outside_what_recall_sequences_can_fill_are_refused(length):
    with pytest.raises(EvalError, match=f"recall length {length} is out of range: expected 11 .* to 311"):
        recall_accuracy(lambda i, t: (t, t), TOK, [64, length], trials=1)


def test_a_tokenizer_without_recall_characters_is_refused_naming_them():
    with pytest.raises(DataError, match=r"no token of its own for '0', '1', .*'9'.*--source recall"):
        recall_accuracy(lambda i, t: (t, t), CharTokenizer(sorted(set(recall.CHARS) - set("0123456789"))), [64], 1)


def test_eval_recall_prints_tables_writes_json_and_a_heatmap(tmp_path, capsys):
    run = fake_run(tmp_path / "run", sorted(recall.CHARS), max_seq_len=64, positional="learned")
    args = ["eval", "recall", "--checkpoint", str(run), "--trials", "2"]
    assert main(args + ["--lengths", "35,64", "--plot", str(tmp_path / "recall.png")]) == 0
    printed = capsys.readouterr().out
    assert "recall accuracy of" in printed and "by distance" in printed and "by depth" in printed
    assert (tmp_path / "recall.png").stat().st_size > 10_000
    assert main(args + ["--lengths", "35,64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lengths"] == [35, 64] and result["queries"] == [2 * 6, 2 * 10] and result["step"] == 3
    assert main(args + ["--lengths", "64,128"]) != 0
    assert "learned position table has 64 trained rows, so it cannot score a context of 128" in capsys.readouterr().err
