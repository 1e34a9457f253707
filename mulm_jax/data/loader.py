"""grain input pipeline: seeded, sharded, checkpointable [B, T] batches from a data set's memory-mapped tokens."""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Literal

import grain
import numpy as np

from mulm_jax.data.assemble import SPLITS, read_manifest
from mulm_jax.data.errors import DataError

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


class _Windows:
    """Start offsets [B] -> {"inputs": tokens[s : s + T], "targets": tokens[s + 1 : s + T + 1]}, int32 [B, T]."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.offsets_T1 = np.arange(seq_len + 1)

    def __call__(self, starts_B: np.ndarray) -> dict[str, np.ndarray]:
        window_BxT1 = self.tokens[np.asarray(starts_B)[:, None] + self.offsets_T1].astype(np.int32)
        return {"inputs": window_BxT1[:, :-1], "targets": window_BxT1[:, 1:]}


def window_starts(num_tokens: int, seq_len: int, seed: int, mode: Mode) -> grain.MapDataset:
    """The endless global stream of window start offsets; element k depends only on (seed, k).

    random_windows: as nanoGPT, a uniform start in [0, num_tokens - seq_len - 1] for each example.
    packed: the non-overlapping windows at multiples of seq_len (each token a target once per epoch), in an
    order shuffled afresh each epoch.
    """
    if mode == "random_windows":
        return grain.MapDataset.range(sys.maxsize).random_map(
            lambda _, rng: rng.integers(num_tokens - seq_len), seed=seed)
    if mode == "packed":
        num_windows = (num_tokens - 1) // seq_len
        return grain.MapDataset.range(num_windows).shuffle(seed=seed).repeat().map(lambda w: w * seq_len)
    raise DataError(f"loader mode {mode!r}: expected one of {', '.join(MODES)}")


def make_loader(dataset_dir: str | Path, split: str, batch_size: int, seq_len: int, seed: int, *,
                mode: Mode = "random_windows", shard_index: int | None = None, shard_count: int | None = None,
                num_threads: int = 1, prefetch: int = 8) -> grain.DatasetIterator:
    """An endless iterator of {"inputs", "targets"} int32 [batch_size, seq_len] batches for this process.

    `batch_size` is per process. Process p of P (default: this JAX process) takes examples p, p + P, ... of the
    global stream, so P processes together see what one process with batch P * batch_size sees. The iterator's
    `get_state()` / `set_state(state)` save and restore its position exactly.
    """
    tokens = load_tokens(dataset_dir, split)
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
    if tokens.size < seq_len + 1:
        raise DataError(f"the {split} split of {dataset_dir} has {tokens.size} tokens, too few for one window of "
                        f"seq_len + 1 = {seq_len + 1}")
    if shard_index is None or shard_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        shard_index, shard_count = shard.shard_index, shard.shard_count
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    # Cut the endless stream at 2**62 examples: grain sizes a batched dataset as ceil(len / batch_size) in floating
    # point, which rounds a sys.maxsize-long stream at batch_size 1 up past the largest index (OverflowError).
    ds = window_starts(tokens.size, seq_len, seed, mode)[shard_index:_STREAM_LENGTH:shard_count]
    ds = ds.batch(batch_size).map(_Windows(tokens, seq_len))
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
    return iter(ds.to_iter_dataset(read))


def eval_batches(dataset_dir: str | Path, batch_size: int, seq_len: int, num_batches: int, *, split: str = "val",
                 seed: int = 0, shard_index: int | None = None, shard_count: int | None = None
                 ) -> list[dict[str, np.ndarray]]:
    """A fixed list of random-window batches: the same every call, so evaluations compare across a run."""
    it = make_loader(dataset_dir, split, batch_size, seq_len, seed, shard_index=shard_index,
                     shard_count=shard_count, num_threads=0)
    return [next(it) for _ in range(num_batches)]
