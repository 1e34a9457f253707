"""Duplicate removal: exact (on whitespace-normalized text) and near-duplicate (MinHash over word shingles + LSH)."""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections import Counter

import numpy as np

from mulm_jax.config import DedupMode

NUM_PERM = 128
SHINGLE_WORDS = 5
_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)
_CHUNK = 8192  # shingles hashed at a time, to bound memory at NUM_PERM * _CHUNK words


def exact_key(text: str) -> bytes:
    """Documents equal up to runs of whitespace share a key."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8", "surrogatepass")).digest()


def shingle_hashes(text: str, k: int = SHINGLE_WORDS) -> np.ndarray:
    """32-bit hashes of the document's k-word shingles (one shingle of all words if it has fewer than k)."""
    words = text.split()
    w = np.array([zlib.crc32(x.encode("utf-8", "surrogatepass")) for x in words] or [0], dtype=np.uint64)
    k = min(k, len(w))
    h = np.zeros(len(w) - k + 1, dtype=np.uint64)
    for j in range(k):  # polynomial rolling combination, wrapping in uint64
        h = h * np.uint64(1_000_003) + w[j : len(w) - k + 1 + j]
    return (h >> np.uint64(32)) ^ (h & _MASK32)


@functools.cache
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240601)  # fixed: signatures must not depend on the run
    a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, num_perm: int = NUM_PERM) -> np.ndarray:
    """The MinHash signature [num_perm] of the document's shingle set: min over shingles of (a x + b) mod p."""
    a, b = _permutations(num_perm)
    x = shingle_hashes(text)
    sig = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK]
        values = ((a[:, None] * chunk[None, :] + b[:, None]) % _PRIME) & _MASK32  # [num_perm, chunk]
        sig = np.minimum(sig, values.min(axis=1))
    return sig


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for locality-sensitive hashing whose S-curve turns at least 0.1 below `threshold`, so that
    pairs at the threshold almost always become candidates (candidates are then checked exactly)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if (1 / bands) ** (1 / rows) <= threshold - 0.1:
            best = (bands, rows)
    return best


def near_duplicates(texts: list[str], threshold: float, num_perm: int = NUM_PERM) -> list[bool]:
    """For each document, whether an earlier kept document has estimated Jaccard similarity >= threshold."""
    if len(texts) < 2:
        return [False] * len(texts)
    bands, rows = lsh_bands(threshold, num_perm)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    sigs = np.stack([minhash(t, num_perm) for t in texts])
    duplicate = []
    for j, sig in enumerate(sigs):
        keys = [sig[i * rows : (i + 1) * rows].tobytes() for i in range(bands)]
        candidates = {i for band, key in zip(buckets, keys) for i in band.get(key, ())}
        dup = any(np.mean(sigs[i] == sig) >= threshold for i in candidates)
        duplicate.append(dup)
        if not dup:
            for band, key in zip(buckets, keys):
                band.setdefault(key, []).append(j)
    return duplicate


def dedup(texts: list[str], mode: DedupMode, threshold: float) -> tuple[list[bool], Counter]:
    """Which documents to keep (the first of each group of duplicates), and how many were removed and why."""
    keep = [True] * len(texts)
    removed: Counter = Counter()
    if mode == "none":
        return keep, removed
    seen: set[bytes] = set()
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in seen:
            keep[i] = False
            removed["exact_duplicate"] += 1
        seen.add(key)
    if mode == "near":
        kept = [i for i in range(len(texts)) if keep[i]]
        for i, dup in zip(kept, near_duplicates([texts[i] for i in kept], threshold)):
            if dup:
                keep[i] = False
                removed["near_duplicate"] += 1
    return keep, removed
