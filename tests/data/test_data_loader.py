"""grain loader: nanoGPT random windows and packed windows, seeded, sharded per process, exactly resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import chex
import numpy as np
import pytest

from mulm_jax.config import DataConfig
from mulm_jax.data import DataError, assemble, eval_batches, make_loader
from mulm_jax.data.loader import window_starts

N = 3000  # tokens in the fixture data set, whose token at position i has id i


@pytest.fixture(scope="module")
def positions(tmp_path_factory) -> Path:
    """A char data set of N distinct characters in code point order: every token's id is its position."""
    folder = tmp_path_factory.mktemp("positions")
    (folder / "text.txt").write_text("".join(chr(0x4E00 + i) for i in range(N)))
    cfg = DataConfig(
        sources=(str(folder / "text.txt"),), tokenizer="char", val_fraction=0.0, out_dir=str(folder / "out")
    )
    return assemble(cfg).path


def loader(dataset: Path, batch_size: int = 4, seq_len: int = 16, seed: int = 0, **kw):
    kw = {"shard_index": 0, "shard_count": 1, **kw}
    return make_loader(dataset, "train", batch_size, seq_len, seed, **kw)


def take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


@pytest.mark.parametrize("mode", ["random_windows", "packed"])
def test_batches_are_int32_windows_with_targets_shifted_by_one(positions, mode):
    for batch in take(loader(positions, batch_size=3, seq_len=16, mode=mode), 5):
        chex.assert_shape([batch["inputs"], batch["targets"]], (3, 16))
        chex.assert_type([batch["inputs"], batch["targets"]], np.int32)
        starts = batch["inputs"][:, :1]
        np.testing.assert_array_equal(batch["inputs"], starts + np.arange(16))  # a contiguous window
        np.testing.assert_array_equal(batch["targets"], starts + np.arange(1, 17))


@pytest.mark.parametrize("mode", ["random_windows", "packed"])
def test_one_example_per_batch_is_the_stream_in_order(positions, mode):
    # grain once sized the endless stream batched by 1 as ceil(sys.maxsize / 1.0): an OverflowError.
    ones = take(loader(positions, batch_size=1, mode=mode, seed=5), 6)
    six = take(loader(positions, batch_size=6, mode=mode, seed=5), 1)[0]
    chex.assert_shape([b["inputs"] for b in ones], (1, 16))
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in ones]), six[key])


def test_random_windows_start_anywhere_from_zero_to_the_last_full_window():
    ds = window_starts(num_tokens=20, seq_len=8, seed=3, mode="random_windows")
    assert {int(ds[i]) for i in range(2000)} == set(range(20 - 8))  # nanoGPT: randint(len(data) - block_size)


def test_packed_windows_cover_each_window_once_per_epoch_in_a_fresh_order():
    ds = window_starts(num_tokens=1001, seq_len=10, seed=3, mode="packed")
    epoch1, epoch2 = ([int(ds[i]) for i in range(k * 100, (k + 1) * 100)] for k in range(2))
    assert sorted(epoch1) == sorted(epoch2) == list(range(0, 1000, 10))
    assert epoch1 != epoch2 and epoch1 != sorted(epoch1)


def test_streams_are_pinned_functions_of_seed_and_example_index():
    # A change here means runs saved with an older version would resume on different batches.
    random_ds = window_starts(1000, 8, 1337, "random_windows")
    packed_ds = window_starts(1000, 8, 1337, "packed")
    assert [int(random_ds[i]) for i in range(4)] == [166, 784, 725, 102]
    assert [int(packed_ds[i]) for i in range(4)] == [952, 632, 552, 352]


def test_same_seed_gives_the_same_batches_and_another_seed_others(positions):
    assert_same_batches(take(loader(positions, seed=7), 10), take(loader(positions, seed=7), 10))
    other = take(loader(positions, seed=8), 10)
    assert not np.array_equal(other[0]["inputs"], take(loader(positions, seed=7), 1)[0]["inputs"])


@pytest.mark.parametrize("mode", ["random_windows", "packed"])
def test_restored_iterator_state_resumes_on_exactly_the_next_batches(positions, mode):
    it = loader(positions, mode=mode, seed=5)
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # as a run folder would store it
    expected = take(it, 6)
    resumed = loader(positions, mode=mode, seed=5)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 6), expected)


@pytest.mark.parametrize("mode", ["random_windows", "packed"])
def test_process_shards_together_see_the_single_process_batches(positions, mode):
    whole = take(loader(positions, batch_size=6, mode=mode), 4)
    shards = [take(loader(positions, batch_size=3, mode=mode, shard_index=p, shard_count=2), 4) for p in (0, 1)]
    for step in range(4):
        for p in (0, 1):  # process p takes global examples p, p + 2, ...
            np.testing.assert_array_equal(shards[p][step]["inputs"], whole[step]["inputs"][p::2])


def test_default_shard_is_this_jax_process(positions):
    assert_same_batches(take(make_loader(positions, "train", 4, 16, 0), 3), take(loader(positions), 3))


def test_eval_batches_are_a_fixed_set(positions):
    first = eval_batches(positions, 4, 16, 5, split="train")
    assert_same_batches(first, eval_batches(positions, 4, 16, 5, split="train"))
    assert len({b["inputs"][0, 0] for b in first}) > 1


def test_split_shorter_than_a_window_is_an_error(positions):
    with pytest.raises(DataError, match=r"the val split of .* has 0 tokens, too few for one window of seq_len"):
        make_loader(positions, "val", 4, 16, 0, shard_index=0, shard_count=1)
    with pytest.raises(DataError, match=r"has 3000 tokens, too few for one window of seq_len \+ 1 = 3001"):
        loader(positions, seq_len=3000)


def test_truncated_token_file_is_an_error(positions, tmp_path):
    damaged = shutil.copytree(positions, tmp_path / "damaged")
    (damaged / "train.bin").write_bytes((damaged / "train.bin").read_bytes()[:-2])
    with pytest.raises(DataError, match=r"damaged: train.bin is missing or not 3000 uint16 tokens"):
        loader(damaged)


def test_bad_shard_or_mode_is_an_error(positions):
    with pytest.raises(DataError, match=r"shard_index=2 must be in \[0, shard_count=2\)"):
        loader(positions, shard_index=2, shard_count=2)
    with pytest.raises(DataError, match="loader mode 'sequential'"):
        loader(positions, mode="sequential")
