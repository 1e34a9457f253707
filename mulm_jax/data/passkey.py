"""Passkey retrieval text: a number hidden in filler sentences, then asked for (training documents and test prompts)."""

from __future__ import annotations

import hashlib

import numpy as np

from mulm_jax.data.errors import DataError
from mulm_jax.data.tokenizer import Tokenizer

FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ", "There and back again. ")
QUESTION = "What is the pass key? The pass key is ["  # "[" opens the key alone: one token to look back for
DIGITS = "0123456789"
KEY_DIGITS = 5
ALONE_CHARS = 1_000_000  # characters generated when passkey is the only source
MAX_FILLER = 3  # filler sentences before the key line, and again after it, in a training document
FORMAT = 4  # bump when the documents change


def key_line(key: str) -> str:
    return f"The pass key is [{key}]. Remember it. [{key}] is the pass key. "


def filler(start: int, count: int) -> str:
    """`count` filler sentences, from sentence `start` of the cycle on."""
    return "".join(FILLER[(start + i) % len(FILLER)] for i in range(count))


def random_key(rng: np.random.Generator) -> str:
    return str(rng.integers(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS))


def documents(num_chars: int, seed: int = 0) -> list[str]:
    """Training documents, at least `num_chars` characters in all: up to MAX_FILLER filler sentences, the key
    line, up to MAX_FILLER more, then the question and its answer."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < num_chars:
        key = random_key(rng)
        before, after, start = rng.integers(0, MAX_FILLER + 1, 2).tolist() + [int(rng.integers(len(FILLER)))]
        doc = filler(start, before) + key_line(key) + filler(start + before, after) + QUESTION + key + "]."
        docs.append(doc)
        total += len(doc)
    return docs


def fingerprint() -> str:
    """sha256 of a sample of the documents: a data set's version changes whenever the generator does."""
    return hashlib.sha256("\n".join(documents(4096) + [str(FORMAT)]).encode()).hexdigest()


def check_covers(tokenizer: Tokenizer, text: str = "".join(FILLER) + key_line(DIGITS) + QUESTION) -> None:
    """DataError naming the characters of passkey text that the tokenizer cannot encode and decode back."""
    missing = []
    for char in sorted(set(text)):
        try:
            ok = tokenizer.decode(tokenizer.encode(char)) == char
        except DataError:
            ok = False
        if not ok:
            missing.append(char)
    if missing:
        raise DataError(
            f"the tokenizer has no token for {', '.join(repr(c) for c in missing)}: passkey text needs the digits "
            "and the filler's characters; assemble the data set with the passkey source "
            "(--source passkey, or mixed in: --source tinyshakespeare --source passkey:0.2)"
        )
