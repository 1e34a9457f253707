"""Dedup: exact on whitespace-normalized text, near-duplicates by MinHash over word shingles."""

from __future__ import annotations

import numpy as np
import pytest

from mulm_jax.data.dedup import NUM_PERM, SHINGLE_WORDS, dedup, lsh_bands, minhash


def random_doc(rng: np.random.Generator, words: int = 200) -> str:
    vocab = [f"w{i}" for i in range(5000)]
    return " ".join(rng.choice(vocab, words))


def edit_words(doc: str, positions: list[int]) -> str:
    words = doc.split()
    for p in positions:
        words[p] = "EDITED"
    return " ".join(words)


def shingle_jaccard(a: str, b: str) -> float:
    def shingles(t: str) -> set[tuple[str, ...]]:
        w = t.split()
        return {tuple(w[i : i + SHINGLE_WORDS]) for i in range(len(w) - SHINGLE_WORDS + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_exact_dedup_removes_documents_equal_up_to_whitespace_and_keeps_the_first():
    docs = ["the cat sat", "the  cat\nsat ", "a dog", "the cat sat"]
    keep, removed = dedup(docs, "exact", 0.8)
    assert keep == [True, False, True, False]
    assert removed == {"exact_duplicate": 2}


def test_exact_dedup_keeps_documents_that_differ_in_case():
    assert dedup(["The cat", "the cat"], "exact", 0.8)[0] == [True, True]


def test_near_dedup_removes_a_lightly_edited_copy_and_keeps_unrelated_documents():
    rng = np.random.default_rng(0)
    docs = [random_doc(rng) for _ in range(20)]
    copy = edit_words(docs[3], [10, 90, 170])
    assert shingle_jaccard(docs[3], copy) > 0.8
    keep, removed = dedup(docs + [copy], "near", 0.8)
    assert keep == [True] * 20 + [False]
    assert removed == {"near_duplicate": 1}


def test_near_dedup_keeps_a_copy_edited_below_the_threshold():
    rng = np.random.default_rng(1)
    doc = random_doc(rng)
    heavy = edit_words(doc, list(range(0, 200, 8)))  # every 8th word: no 5-word shingle in ~1/2 survives
    assert shingle_jaccard(doc, heavy) < 0.6
    assert dedup([doc, heavy], "near", 0.8)[0] == [True, True]


def test_exact_mode_ignores_near_duplicates_and_none_mode_keeps_everything():
    rng = np.random.default_rng(2)
    doc = random_doc(rng)
    docs = [doc, edit_words(doc, [50]), doc]
    assert dedup(docs, "exact", 0.8)[0] == [True, True, False]
    assert dedup(docs, "none", 0.8) == ([True, True, True], {})


@pytest.mark.parametrize("edits", [2, 10, 30])
def test_minhash_agreement_estimates_shingle_jaccard(edits):
    rng = np.random.default_rng(edits)
    doc = random_doc(rng, 400)
    other = edit_words(doc, sorted(rng.choice(400, edits, replace=False).tolist()))
    estimate = np.mean(minhash(doc) == minhash(other))
    assert abs(estimate - shingle_jaccard(doc, other)) < 0.12  # ~3 standard errors at 128 permutations


def test_minhash_is_the_same_in_every_run_and_on_every_machine():
    # Pinned values: a change means saved data sets would dedup differently for the same inputs.
    assert minhash("a b c d e f g")[:3].tolist() == [1460527653, 2504088258, 880741069]
    assert minhash("short").shape == (NUM_PERM,)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_lsh_makes_pairs_at_the_threshold_likely_candidates(threshold):
    bands, rows = lsh_bands(threshold)
    assert bands * rows <= NUM_PERM
    assert 1 - (1 - threshold**rows) ** bands > 0.9
