"""Run folders: checkpoint retention (newest N + best), a corrupt checkpoint skipped, load_model by step, `generate`."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from support import ALPHABET, random_params, tiny_model
from mulm_jax.__main__ import main
from mulm_jax.config import Config, dump_config
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.infer import load_model
from mulm_jax.infer.loading import InferenceError
from mulm_jax.models import build_model
from mulm_jax.train import checkpoint as checkpoint_module
from mulm_jax.train.checkpoint import CheckpointError, Checkpoints
from mulm_jax.train.step import TrainState


def state(step: int, params) -> TrainState:
    return TrainState(
        step=np.int32(step), params=params, opt_state={"count": np.int32(step)}, rng=np.array([0, step], np.uint32)
    )


def save_steps(workdir: Path, keep: int, val_losses: dict[int, float]) -> Checkpoints:
    """Checkpoints of a one-array model whose values are the step, each with its validation loss."""
    checkpoints = Checkpoints(workdir, keep)
    for step, loss in val_losses.items():
        checkpoints.save(state(step, {"w": np.full(3, step, np.float32)}), {"position": step}, loss)
    return checkpoints


def test_the_newest_checkpoints_and_the_best_one_are_kept(tmp_path):
    checkpoints = save_steps(tmp_path, 2, {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 2.2})
    assert checkpoints.steps() == [2, 4, 5]  # the newest two, and step 2 for its validation loss
    checkpoints.save(state(6, {"w": np.full(3, 6, np.float32)}), {"position": 6}, 0.5)  # a new best
    assert checkpoints.steps() == [5, 6]
    checkpoints.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [5, 6]


def test_a_disk_without_room_for_the_checkpoint_is_refused_before_writing_with_the_sizes(tmp_path, monkeypatch):
    checkpoints = save_steps(tmp_path, 5, {1: 2.0})
    free = lambda path: shutil._ntuple_diskusage(100 * 2**20, 100 * 2**20 - 1000, 1000)  # noqa: E731
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", free)
    big = state(2, {"w": np.zeros(1000, np.float32)})  # 4,000 bytes of parameters
    with pytest.raises(
        CheckpointError,
        match=r"the checkpoint at step 2 could not be written to .*checkpoints: it "
        r"needs about 0.0 MiB and 0.0 MiB are free. The earlier checkpoints "
        r"\(steps \[1\]\) are kept; free some space and run the same command "
        r"again to resume from step 1",
    ):
        checkpoints.save(big, {"position": 2})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_write_that_fails_midway_is_one_error_and_its_unfinished_folder_is_removed(
    tmp_path, monkeypatch, capsys, caplog
):
    # As orbax fails on a full disk: a temporary step folder half written, the error logged and printed by each
    # writing thread, then raised (seen on a 16 MB tmpfs).
    checkpoints = save_steps(tmp_path, 5, {1: 2.0})

    def full_disk(step, **kwargs):
        unfinished = tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1234" / "state"
        unfinished.mkdir(parents=True)
        (unfinished / "part").write_bytes(b"\x00" * 100)
        for _ in range(4):
            logging.getLogger("absl").error("RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']")
            print("Traceback (most recent call last):\nRuntimeError: Event loop is closed", file=sys.stderr)
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params.w": Failed to write 4000 bytes to file 21: No '
            "space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(checkpoints.manager, "save", full_disk)
    capsys.readouterr()
    with pytest.raises(CheckpointError) as raised:
        checkpoints.save(state(2, {"w": np.zeros(3, np.float32)}), {"position": 2})
    assert str(raised.value).startswith("the checkpoint at step 2 could not be written to ")
    assert ": No space left on device; its unfinished folder was removed. The earlier checkpoints (steps [1])" in (
        str(raised.value)
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert capsys.readouterr().err == "" and "RESOURCE_EXHAUSTED" not in caplog.text  # nothing but the error
    restored, data = checkpoints.restore_latest(state(0, {"w": np.zeros(3, np.float32)}))
    assert int(restored.step) == 1 and data == {"position": 1}


def test_what_a_successful_save_prints_or_logs_is_not_lost(tmp_path, monkeypatch, capsys, caplog):
    checkpoints = save_steps(tmp_path, 5, {1: 2.0})
    save = checkpoints.manager.save

    def noisy(*args, **kwargs):
        logging.getLogger("absl").error("an error orbax logged but survived")
        print("a line orbax printed", file=sys.stderr)
        return save(*args, **kwargs)

    monkeypatch.setattr(checkpoints.manager, "save", noisy)
    checkpoints.save(state(2, {"w": np.zeros(3, np.float32)}), {"position": 2})
    assert checkpoints.steps() == [1, 2]
    assert "a line orbax printed" in capsys.readouterr().err and "orbax logged but survived" in caplog.text


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_one_before_it(tmp_path, caplog):
    checkpoints = save_steps(tmp_path, 5, {1: 2.0, 2: 1.0})
    files = [p for p in (tmp_path / "checkpoints/2/state").rglob("*") if p.is_file()]
    assert files
    for path in files:  # a torn write: every file of step 2's state garbled
        path.write_bytes(b"\x00garbage" * 4)
    like = state(0, {"w": np.zeros(3, np.float32)})
    with caplog.at_level(logging.WARNING, logger="mulm_jax.train.checkpoint"):
        restored, data = checkpoints.restore_latest(like)
    checkpoints.close()
    assert int(restored.step) == 1 and data == {"position": 1}
    np.testing.assert_array_equal(restored.params["w"], np.full(3, 1.0, np.float32))
    np.testing.assert_array_equal(restored.rng, [0, 1])
    assert "checkpoint 2 could not be restored" in caplog.text


def make_run(folder: Path, steps: tuple[int, ...] = (1, 2)) -> dict[int, dict]:
    """A run folder as train.py leaves it (config, tokenizer, checkpoints) for a tiny model, with other random
    weights at each step, scaled up so that each next token depends on the context; returns each step's params."""
    cfg = tiny_model(max_seq_len=32)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(Config(model=cfg)))
    CharTokenizer(list(ALPHABET)).save(folder)
    model = build_model(cfg)
    params = {
        step: jax.tree.map(
            lambda x: 3 * np.asarray(x), random_params(model, np.zeros((1, 4), np.int32), seed=step)["params"]
        )
        for step in steps
    }
    checkpoints = Checkpoints(folder, len(steps))
    for step in steps:
        checkpoints.save(state(step, params[step]), {}, None)
    checkpoints.close()
    return params


def test_load_model_reads_the_newest_checkpoint_or_the_step_asked_for(tmp_path):
    params = make_run(tmp_path / "run")
    newest, first = load_model(tmp_path / "run"), load_model(tmp_path / "run", step=1)
    assert (newest.step, first.step) == (2, 1)
    jax.tree.map(np.testing.assert_array_equal, newest.params, params[2])
    jax.tree.map(np.testing.assert_array_equal, first.params, params[1])
    with pytest.raises(InferenceError, match=r"has no checkpoint at step 3; it has steps \[1, 2\]"):
        load_model(tmp_path / "run", step=3)


def test_generate_prints_the_greedy_continuation_of_the_full_forward_pass(tmp_path, capsys):
    params = make_run(tmp_path / "run")[1]
    model, tokenizer = build_model(tiny_model(max_seq_len=32)), CharTokenizer(list(ALPHABET))
    forward = jax.jit(lambda ids_1xT: model.apply({"params": params}, ids_1xT))
    ids = tokenizer.encode("to be")
    for _ in range(12):  # the whole sequence (padded: the model is causal) run again for each new token
        ids.append(int(np.argmax(forward(np.array([ids + [0] * (32 - len(ids))], np.int32))[0, len(ids) - 1])))
    expected = tokenizer.decode(ids[5:])
    assert len(set(expected)) > 2  # a continuation that depends on the context, not one repeated character
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(tmp_path / "run"),
                "--step",
                "1",
                "--prompt",
                "to be",
                "--temperature",
                "0",
                "--max-tokens",
                "12",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out == expected + "\n"
    assert "[12 tokens, finish: length]" in out.err
