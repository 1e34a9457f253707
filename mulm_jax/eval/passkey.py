"""Passkey retrieval: a key hidden at a depth inside filler text of a given length, then asked for; accuracy by
length and depth, scored by exact match of the greedy answer."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mulm_jax.data import passkey
from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.eval.perplexity import Scorer
from mulm_jax.eval.scoring import EvalError, batched


def passkey_sequence(tokenizer: Tokenizer, length: int, depth: float, key: str) -> tuple[np.ndarray, int]:
    """Token ids [length + 1] (the model reads the first `length`): filler, the key line with `depth` of the filler
    before it, the rest of the filler (whole sentences), the question and the key; and where the key's ids start.

    The filler before the key line is cut at its start so that the sequence has exactly length + 1 ids.
    """
    encode = lambda text: np.asarray(tokenizer.encode(text), np.int32)  # noqa: E731
    key_line, question, answer = encode(passkey.key_line(key)), encode(passkey.QUESTION), encode(key)
    room = length + 1 - len(key_line) - len(question) - len(answer)
    if room < 0:
        raise EvalError(
            f"passkey length {length} is too short: the key line, question and answer alone take "
            f"{length + 1 - room} tokens"
        )
    sizes = [len(encode(sentence)) for sentence in passkey.FILLER]
    sentences, used = 0, 0
    while used + sizes[sentences % len(sizes)] <= round((1 - depth) * room):
        used += sizes[sentences % len(sizes)]
        sentences += 1
    after_ids = encode(passkey.filler(0, sentences))[:room]
    before = room - len(after_ids)
    count = -(-before // min(sizes)) + 1 if before else 0
    stream = encode(passkey.filler(-count, count))  # sentences ending with the one before sentence 0
    before_ids = stream[len(stream) - before :]
    ids = np.concatenate([before_ids, key_line, after_ids, question, answer])
    return ids, len(ids) - len(answer)


def answer_hits(greedy_NxT: np.ndarray, sequences_NxT1: np.ndarray, answer_starts_N: np.ndarray) -> np.ndarray:
    """bool [N]: whether the greedy choice at every position that predicts an answer id is that id. The model reads
    the sequence up to each answer id, so this is exactly whether greedy generation after the question would
    produce the key."""
    targets_NxT = sequences_NxT1[:, 1:]
    positions_T = np.arange(targets_NxT.shape[1])
    answer_NxT = positions_T >= (np.asarray(answer_starts_N)[:, None] - 1)
    return np.all((greedy_NxT == targets_NxT) | ~answer_NxT, axis=1)


def passkey_accuracy(
    score: Scorer,
    tokenizer: Tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int,
    *,
    seed: int = 0,
    batch: int = 4,
) -> dict:
    """Exact-match accuracy of `trials` random keys at each length and depth:
    {"lengths", "depths", "trials", "accuracy": [[per depth] per length], "by_length": [...]}."""
    passkey.check_covers(tokenizer)
    if trials < 1 or not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise EvalError(f"trials={trials} and depths={list(depths)}: expected trials >= 1 and depths in [0, 1]")
    rng = np.random.default_rng(seed)
    keys = [passkey.random_key(rng) for _ in range(trials)]
    accuracy = []
    for length in lengths:
        cases = [passkey_sequence(tokenizer, length, depth, key) for depth in depths for key in keys]
        sequences_NxT1 = np.stack([ids for ids, _ in cases])
        starts_N = np.asarray([start for _, start in cases])
        hits = []
        for rows, real in batched(np.arange(len(cases)), batch):
            _, greedy_BxT = score(sequences_NxT1[rows, :-1], sequences_NxT1[rows, 1:])
            hits += answer_hits(greedy_BxT, sequences_NxT1[rows], starts_N[rows])[:real].tolist()
        accuracy.append(np.asarray(hits).reshape(len(depths), trials).mean(axis=1).tolist())
    return {
        "lengths": list(lengths),
        "depths": list(depths),
        "trials": trials,
        "accuracy": accuracy,
        "by_length": [float(np.mean(row)) for row in accuracy],
    }
