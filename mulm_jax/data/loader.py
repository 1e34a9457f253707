"""grain input pipeline: seeded, sharded, checkpointable [B, T] batches from a data set's memory-mapped tokens (windows
of text, or padded pairs with their loss mask)."""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Literal, Optional

import grain
import numpy as np

from mulm_jax.data.assemble import SPLITS, read_manifest
from mulm_jax.data.errors import DataError
from mulm_jax.data.pairs import PairArrays, fit_problem
from mulm_jax.data.tokenizer import Tokenizer

Mode = Literal["random_windows", "packed"]
MODES: tuple[str, ...] = typing.get_args(Mode)
_STREAM_LENGTH = 2**62  # examples of the global stream a loader reads: endless in practice


def load_tokens(dataset_dir: str | Path, split: str) -> np.ndarray:
    """The split's token ids, memory-mapped read-only (an empty array for an empty split)."""
    manifest = read_manifest(dataset_dir)
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    path = Path(dataset_dir) / manifest["files"][split]
    count, dtype = manifest[f"{split}_tokens"], np.dtype(manifest["dtype"])
    if not path.is_file() or path.stat().st_size != count * dtype.itemsize:
        raise DataError(f"data set {dataset_dir} is damaged: {path.name} is missing or not {count} {dtype} tokens")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def load_pairs(dataset_dir: str | Path, split: str) -> PairArrays:
    """A pairs data set's split: its examples' tokens, loss mask, offsets and origins, memory-mapped read-only."""
    manifest = read_manifest(dataset_dir)
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if manifest.get("kind", "text") == "text":
        raise DataError(f"data set {dataset_dir} holds text, not pairs")
    return PairArrays.load(Path(dataset_dir), manifest, split)


def show_examples(dataset_dir: str | Path, split: str, start: int = 0, count: int = 10) -> list[dict]:
    """Examples `start` to `start + count` of a pairs data set's split, as a viewer shows them: where each came from
    (file and line) and its tokens, each with its id, its text and whether it is trained on (the loss mask)."""
    manifest = read_manifest(dataset_dir)
    arrays = load_pairs(dataset_dir, split)
    tokenizer = Tokenizer.load(dataset_dir)
    shown = []
    for i in range(max(start, 0), min(start + count, arrays.count)):
        ids, mask = arrays.example(i)
        file, line = arrays.origin[i]
        shown.append(
            {
                "index": i,
                "file": manifest["pairs"]["files"][file],
                "line": int(line),
                "tokens": [{"id": int(t), "text": tokenizer.piece(int(t)), "loss": bool(m)} for t, m in zip(ids, mask)],
            }
        )
    return shown


class _Windows:
    """Start offsets [B] -> {"inputs": tokens[s : s + T], "targets": tokens[s + 1 : s + T + 1]}, int32 [B, T]."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.offsets_T1 = np.arange(seq_len + 1)

    def __call__(self, starts_B: np.ndarray) -> dict[str, np.ndarray]:
        window_BxT1 = self.tokens[np.asarray(starts_B)[:, None] + self.offsets_T1].astype(np.int32)
        return {"inputs": window_BxT1[:, :-1], "targets": window_BxT1[:, 1:]}


class _PairRows:
    """Example indices [B] -> a batch of pairs, each padded at its end (padding and untrained tokens have
    loss_mask False). A decoder reads each example whole: {"inputs", "targets", "loss_mask"} [B, T]. An
    encoder-decoder (`source_len` set) reads the untrained start as its source, {"source", "source_valid"} [B, S],
    and the rest teacher-forced after the start token: inputs = start, target[:-1]; targets = target."""

    def __init__(self, arrays: PairArrays, seq_len: int, source_len: Optional[int], start_id: int):
        self.arrays, self.T, self.S, self.start_id = arrays, seq_len, source_len, start_id

    def __call__(self, index_B: np.ndarray) -> dict[str, np.ndarray]:
        B, T = len(index_B), self.T
        batch = {
            "inputs": np.zeros((B, T), np.int32),
            "targets": np.zeros((B, T), np.int32),
            "loss_mask": np.zeros((B, T), bool),
        }
        if self.S is not None:
            batch.update(source=np.zeros((B, self.S), np.int32), source_valid=np.zeros((B, self.S), bool))
        for b, i in enumerate(np.asarray(index_B).tolist()):
            ids, mask = self.arrays.example(i)
            if self.S is None:
                n = len(ids) - 1
                batch["inputs"][b, :n], batch["targets"][b, :n], batch["loss_mask"][b, :n] = ids[:-1], ids[1:], mask[1:]
                continue
            s = int(np.argmax(mask))  # the first trained token: the target starts there
            batch["source"][b, :s], batch["source_valid"][b, :s] = ids[:s], True
            target = ids[s:]
            n = len(target)
            batch["inputs"][b, 0], batch["inputs"][b, 1:n] = self.start_id, target[:-1]
            batch["targets"][b, :n], batch["loss_mask"][b, :n] = target, True
        return batch


def batch_shapes(
    manifest: dict, batch_size: int, seq_len: int, source_len: Optional[int] = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The arrays of the batches make_loader yields for a data set (its manifest): name -> (shape, dtype)."""
    B, T = batch_size, seq_len
    shapes = {"inputs": ((B, T), np.dtype(np.int32)), "targets": ((B, T), np.dtype(np.int32))}
    if manifest.get("kind", "text") != "text":
        shapes["loss_mask"] = ((B, T), np.dtype(bool))
        if source_len is not None:
            shapes.update(source=((B, source_len), np.dtype(np.int32)), source_valid=((B, source_len), np.dtype(bool)))
    return shapes


def check_examples_fit(
    dataset_dir: str | Path,
    seq_len: int,
    source_len: Optional[int] = None,
    *,
    splits: tuple[str, ...] = SPLITS,
    seq_len_name: str = "seq_len",
    source_len_name: str = "source_len",
) -> None:
    """For a data set of pairs, a DataError naming the first example (file, line, field) too long for rows of
    `seq_len` tokens (and, for an encoder-decoder, sources of `source_len`), or, for an encoder-decoder, one that
    is not one source and one target; nothing for text."""
    manifest = read_manifest(dataset_dir)
    kind = manifest.get("kind", "text")
    if kind == "text":
        return
    for split in splits:
        arrays = load_pairs(dataset_dir, split)
        if source_len is not None and not arrays.single_boundary():
            raise DataError(
                f"data set {dataset_dir} holds {kind} examples of several trained parts (chat "
                "conversations of more than one assistant turn): an encoder-decoder trains on one "
                "source and one target each; train a decoder on it"
            )
        problem = fit_problem(
            arrays,
            kind,
            manifest["pairs"]["files"],
            seq_len=seq_len,
            source_len=source_len,
            seq_len_name=seq_len_name,
            source_len_name=source_len_name,
        )
        if problem:
            raise DataError(f"data set {dataset_dir}: {problem}")


def window_starts(num_tokens: int, seq_len: int, seed: int, mode: Mode) -> grain.MapDataset:
    """The endless global stream of window start offsets; element k depends only on (seed, k).

    random_windows: as nanoGPT, a uniform start in [0, num_tokens - seq_len - 1] for each example.
    packed: the non-overlapping windows at multiples of seq_len (each token a target once per epoch), in an
    order shuffled afresh each epoch.
    """
    if mode == "random_windows":
        return grain.MapDataset.range(sys.maxsize).random_map(
            lambda _, rng: rng.integers(num_tokens - seq_len), seed=seed
        )
    if mode == "packed":
        num_windows = (num_tokens - 1) // seq_len
        return grain.MapDataset.range(num_windows).shuffle(seed=seed).repeat().map(lambda w: w * seq_len)
    raise DataError(f"loader mode {mode!r}: expected one of {', '.join(MODES)}")


def make_loader(
    dataset_dir: str | Path,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    *,
    mode: Mode = "random_windows",
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 1,
    prefetch: int = 8,
    source_len: Optional[int] = None,
) -> grain.DatasetIterator:
    """An endless iterator of batches for this process: of text, {"inputs", "targets"} int32 [batch_size, seq_len];
    of pairs, each example once per epoch in an order shuffled afresh each epoch, padded as _PairRows says
    (`source_len` set: for an encoder-decoder). batch_shapes() gives the arrays.

    `batch_size` is per process. Process p of P (default: this JAX process) takes examples p, p + P, ... of the
    global stream, so P processes together see what one process with batch P * batch_size sees. The iterator's
    `get_state()` / `set_state(state)` save and restore its position exactly.
    """
    manifest = read_manifest(dataset_dir)
    pairs = manifest.get("kind", "text") != "text"
    tokens = None if pairs else load_tokens(dataset_dir, split)
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
    if tokens is not None and tokens.size < seq_len + 1:
        raise DataError(
            f"the {split} split of {dataset_dir} has {tokens.size} tokens, too few for one window of "
            f"seq_len + 1 = {seq_len + 1}"
        )
    if pairs:
        arrays = load_pairs(dataset_dir, split)
        check_examples_fit(dataset_dir, seq_len, source_len, splits=(split,))
        if not arrays.count:
            raise DataError(f"the {split} split of {dataset_dir} holds no examples")
    if shard_index is None or shard_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        shard_index, shard_count = shard.shard_index, shard.shard_count
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    # Cut the endless stream at 2**62 examples: grain sizes a batched dataset as ceil(len / batch_size) in floating
    # point, which rounds a sys.maxsize-long stream at batch_size 1 up past the largest index (OverflowError).
    if pairs:
        ds = grain.MapDataset.range(arrays.count).shuffle(seed=seed).repeat()[shard_index:_STREAM_LENGTH:shard_count]
        ds = ds.batch(batch_size).map(_PairRows(arrays, seq_len, source_len, manifest["pairs"]["decoder_start_id"]))
    else:
        ds = window_starts(tokens.size, seq_len, seed, mode)[shard_index:_STREAM_LENGTH:shard_count]
        ds = ds.batch(batch_size).map(_Windows(tokens, seq_len))
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
    return iter(ds.to_iter_dataset(read))


def eval_batches(
    dataset_dir: str | Path,
    batch_size: int,
    seq_len: int,
    num_batches: int,
    *,
    split: str = "val",
    seed: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    source_len: Optional[int] = None,
) -> list[dict[str, np.ndarray]]:
    """A fixed list of random-window batches (or of pairs): the same every call, so evaluations compare across a
    run."""
    it = make_loader(
        dataset_dir,
        split,
        batch_size,
        seq_len,
        seed,
        shard_index=shard_index,
        shard_count=shard_count,
        num_threads=0,
        source_len=source_len,
    )
    return [next(it) for _ in range(num_batches)]
