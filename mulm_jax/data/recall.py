"""Associative recall text (MQAR, Zoology: Arora et al. 2023): key-value pairs, then the keys asked for again, each
answered by its value (training documents, and the test sequences of `eval recall`, made of the same documents).

A document is `P` pairs of a key (a letter) and its value (a digit), a `|`, then every key again in a random order,
each followed by its value: `a3 k7 Q1|k7 Q1 a3`. The keys of a document are distinct, and distinct from those of the
documents in the RECENT_CHARS characters before it, so that a key has one value within any training window of up to
that length (a window starts anywhere). Documents are short (at most MAX_PAIRS pairs, 29 characters), so that a
training window of 64 tokens holds whole documents more often than cut ones: a query whose pair was cut off has no
answer to learn from, and with documents as long as the window most would (a 2-layer model then learns nothing in
thousands of steps; with these, recall is learned in minutes). Only the answers can be learned (the pairs are
random): every query's value is a target that an induction head (attend to the token after the key's earlier
occurrence and copy it) predicts exactly.

Positions are in characters, which are tokens for a character tokenizer (each character of this text must be one
token of its own). A query's *distance* is its key's position minus its pair's key's position; a pair's *depth*
is its key's position over the context length (0: the start).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mulm_jax.data.errors import DataError
from mulm_jax.data.tokenizer import Tokenizer

KEYS = string.ascii_lowercase + string.ascii_uppercase  # 52: the most pairs one sequence can hold
VALUES = string.digits
SEPARATOR = "|"  # between the pairs and the queries
MIN_PAIRS, MAX_PAIRS = 1, 5  # pairs of a document: 5 to 29 characters, two or more fit a 64-token context
RECENT_CHARS = 64  # a document's keys are distinct from those of the documents this many characters before it
ALONE_CHARS = 1_000_000  # characters generated when recall is the only source
FORMAT = 2  # bump when the documents change
CHARS = KEYS + VALUES + " " + SEPARATOR  # every character of recall text


@dataclass(frozen=True)
class Layout:
    """One recall text and where its parts are: the key position of each pair, and of each query with the index
    of the pair it asks for."""

    text: str
    pair_positions: np.ndarray  # int [P]
    query_positions: np.ndarray  # int [Q]
    query_pairs: np.ndarray  # int [Q]: which pair each query asks for

    @property
    def distances(self) -> np.ndarray:
        """Per query: its key's position minus its pair's key's position (tokens)."""
        return self.query_positions - self.pair_positions[self.query_pairs]

    def answers(self) -> str:
        """The value each query is answered by, in query order."""
        return "".join(self.text[p + 1] for p in self.query_positions)


def layout(keys: str, values: str, order: np.ndarray) -> Layout:
    """The text of pairs keys[i] values[i], the separator, then the queries of pairs `order` (each with its
    answer): pair i's key at 3 i, query j's at 3 P + 3 j; 6 P - 1 characters when every pair is asked for."""
    P = len(keys)
    pairs = " ".join(k + v for k, v in zip(keys, values))
    queries = " ".join(keys[i] + values[i] for i in order)
    return Layout(
        pairs + SEPARATOR + queries,
        3 * np.arange(P),
        3 * P + 3 * np.arange(len(order)),
        np.asarray(order, int),
    )


def random_layout(rng: np.random.Generator, pairs: int, keys: Sequence[str] = KEYS) -> Layout:
    """`pairs` pairs of distinct keys drawn from `keys` and random values, every one asked for in a random order."""
    chosen = "".join(keys[i] for i in rng.permutation(len(keys))[:pairs])
    values = "".join(VALUES[i] for i in rng.integers(len(VALUES), size=pairs))
    return layout(chosen, values, rng.permutation(pairs))


def document_layouts(num_chars: int, rng: np.random.Generator) -> list[Layout]:
    """Documents, at least `num_chars` characters in all (each followed by an end-of-document token): MIN_PAIRS to
    MAX_PAIRS pairs each, their keys distinct from those of the documents in the RECENT_CHARS characters before."""
    docs: list[Layout] = []
    total = 0
    while total < num_chars:
        used, before = set(), 0
        for doc in reversed(docs):
            if before >= RECENT_CHARS:
                break
            used.update(doc.text[: doc.text.index(SEPARATOR)])
            before += len(doc.text) + 1  # and its end-of-document token
        doc = random_layout(rng, int(rng.integers(MIN_PAIRS, MAX_PAIRS + 1)), [k for k in KEYS if k not in used])
        docs.append(doc)
        total += len(doc.text)
    return docs


def documents(num_chars: int, seed: int = 0) -> list[str]:
    """Training documents' texts (document_layouts), at least `num_chars` characters in all."""
    return [doc.text for doc in document_layouts(num_chars, np.random.default_rng(seed))]


def fingerprint() -> str:
    """sha256 of a sample of the documents: a data set's version changes whenever the generator does."""
    return hashlib.sha256("\n".join(documents(4096) + [str(FORMAT)]).encode()).hexdigest()


def token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The token id of each character of recall text; a DataError naming those the tokenizer has no single token
    for (that encode to none, to several, or decode to another text)."""
    ids, missing = {}, []
    for char in CHARS:
        try:
            encoded = tokenizer.encode(char)
            ok = len(encoded) == 1 and tokenizer.decode(encoded) == char
        except DataError:
            ok = False
        if ok:
            ids[char] = encoded[0]
        else:
            missing.append(char)
    if missing:
        raise DataError(
            f"the tokenizer has no token of its own for {', '.join(repr(c) for c in missing)}: recall text needs "
            "one token per letter, digit, space and '|'; assemble the data set with the recall source and the "
            "character tokenizer (--source recall --tokenizer char)"
        )
    return ids


def check_covers(tokenizer: Tokenizer) -> None:
    """DataError when the tokenizer cannot encode recall text one character per token (see token_ids)."""
    token_ids(tokenizer)
