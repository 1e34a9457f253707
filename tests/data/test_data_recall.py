"""The generated `recall` source: key-value pairs then every key asked for again; distinct keys, right answers,
deterministic by seed, fingerprinted, assembled alone or as a share, and the tokenizer it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mulm_jax.config import DataConfig
from mulm_jax.data import DataError, Tokenizer, assemble, recall
from mulm_jax.data.tokenizer import CharTokenizer


def parse(doc: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A document's pairs (key -> value, checked distinct) and its queries (key, answer)."""
    pairs_text, queries_text = doc.split(recall.SEPARATOR)
    pairs = [(p[0], p[1]) for p in pairs_text.split(" ")]
    assert len({k for k, _ in pairs}) == len(pairs), doc
    return dict(pairs), [(q[0], q[1]) for q in queries_text.split(" ")]


def test_documents_pair_distinct_keys_and_answer_every_key_with_its_value():
    docs = recall.documents(20_000, seed=3)
    assert sum(map(len, docs)) >= 20_000
    sizes = set()
    for doc in docs:
        assert set(doc) <= set(recall.CHARS)
        pairs, queries = parse(doc)
        assert set(pairs) <= set(recall.KEYS) and set(pairs.values()) <= set(recall.VALUES)
        assert sorted(k for k, _ in queries) == sorted(pairs)  # every key asked for once
        assert all(pairs[k] == answer for k, answer in queries)
        assert len(doc) == 6 * len(pairs) - 1
        sizes.add(len(pairs))
    assert sizes == set(range(recall.MIN_PAIRS, recall.MAX_PAIRS + 1))


def test_a_documents_keys_are_new_within_the_characters_before_it():
    docs = recall.documents(20_000, seed=0)
    stream = "\n".join(docs)  # as packed, one end-of-document token between documents
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
    for doc, start in zip(docs, starts):
        before = stream[max(0, start - recall.RECENT_CHARS) : start]
        assert not set(parse(doc)[0]) & set(before), (before, doc)


def test_documents_are_deterministic_by_seed_and_the_fingerprint_follows_the_format(monkeypatch):
    assert recall.documents(2_000, seed=1) == recall.documents(2_000, seed=1)
    assert recall.documents(2_000, seed=1) != recall.documents(2_000, seed=2)
    fingerprint = recall.fingerprint()
    assert recall.fingerprint() == fingerprint
    monkeypatch.setattr(recall, "FORMAT", recall.FORMAT + 1)
    assert recall.fingerprint() != fingerprint


def test_the_layout_places_pairs_then_queries_at_known_positions():
    layout = recall.layout("akQ", "372", np.array([1, 2, 0]))
    assert layout.text == "a3 k7 Q2|k7 Q2 a3"
    assert layout.pair_positions.tolist() == [0, 3, 6] and layout.query_positions.tolist() == [9, 12, 15]
    assert [layout.text[p] for p in layout.query_positions] == ["k", "Q", "a"]
    assert layout.distances.tolist() == [9 - 3, 12 - 6, 15 - 0]
    assert layout.answers() == "723"


def test_recall_assembles_alone_or_as_a_share_with_its_own_version(tmp_path):
    out = str(tmp_path / "out")
    alone = assemble(DataConfig(sources=("recall",), tokenizer="char", out_dir=out)).manifest
    assert alone["sources"][0]["generated"] == "recall"
    assert recall.ALONE_CHARS <= alone["train_chars"] + alone["val_chars"] < recall.ALONE_CHARS + 100
    tok = Tokenizer.load(Path(out) / alone["version"])
    assert set(recall.token_ids(tok)) == set(recall.CHARS)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    mixed = assemble(DataConfig(sources=(str(corpus), "recall:0.3"), tokenizer="char", out_dir=out)).manifest
    assert 0.29 < 1 - len(corpus.read_text()) / (mixed["train_chars"] + mixed["val_chars"]) < 0.31
    passkey = assemble(DataConfig(sources=(str(corpus), "passkey:0.3"), tokenizer="char", out_dir=out)).manifest
    assert len({alone["version"], mixed["version"], passkey["version"]}) == 3


def test_a_tokenizer_without_a_token_per_recall_character_is_refused_naming_them():
    no_bar = CharTokenizer(sorted(set(recall.CHARS) - {"|", "Z"}))
    with pytest.raises(DataError, match=r"no token of its own for 'Z', '\|': .*--source recall --tokenizer char"):
        recall.check_covers(no_bar)
