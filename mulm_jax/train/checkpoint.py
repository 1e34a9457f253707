"""Orbax checkpoints of a run: train state, RNG key and data-iterator position; newest N plus the best by val loss."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from mulm_jax.errors import MulmError
from mulm_jax.runs import checkpoint_manager
from mulm_jax.train.step import TrainState

log = logging.getLogger(__name__)


def _to_saveable(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def _restore_target(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        return np.zeros(x.shape, x.dtype)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class CheckpointError(MulmError):
    """A checkpoint that could not be written (a full disk, ...); its unfinished folder is gone, the others kept."""


def _state_bytes(state: TrainState) -> int:
    return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def _reason(error: BaseException) -> str:
    """The cause of a failed write in a few words: the OS's, when the message carries one."""
    text = str(error)
    os_error = re.search(r"(No space left on device|Permission denied|Read-only file system|Disk quota exceeded)", text)
    if os_error:
        return os_error.group(1)
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


@contextlib.contextmanager
def _failures_held() -> Iterator[None]:
    """While orbax writes: what it prints or logs at ERROR is held back, and given back if the save succeeds. When a
    write fails, orbax logs it from every writing thread and its remaining writes end in tracebacks printed as they
    finish, after its event loop has closed; the caller reports the failure once instead."""
    held_records: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            held_records.append(record)
            return False
        return True

    absl = logging.getLogger("absl")
    absl.addFilter(hold)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            try:
                yield
            except BaseException:
                time.sleep(0.5)  # the other writes fail and print in the meantime
                gc.collect()  # their coroutines are collected now, not at exit
                raise
    finally:
        absl.removeFilter(hold)
    for record in held_records:  # a successful save: nothing held back is lost
        absl.handle(record)
    if printed.getvalue():
        print(printed.getvalue(), end="", file=sys.stderr)


class Checkpoints:
    """`DIR/checkpoints/<step>/{state,data}`; every process calls save/restore (orbax coordinates them)."""

    def __init__(self, workdir: Path, keep: int):
        self.manager = checkpoint_manager(
            workdir,
            ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,
                preservation_policy=policy.AnyPreservationPolicy(
                    [
                        policy.LatestN(n=keep),
                        policy.BestN(
                            get_metric_fn=lambda m: -m["val_loss"], n=1, keep_checkpoints_without_metrics=False
                        ),
                    ]
                ),
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict, val_loss: Optional[float] = None) -> None:
        """Write the checkpoint of `state` (and the data position); a CheckpointError if it cannot be written, before
        writing anything when the disk plainly lacks the room, or once a write failed, its unfinished folder
        removed."""
        step = int(jax.device_get(state.step))
        kept = self.steps()
        if step in kept:
            return
        directory = Path(self.manager.directory)
        needed, free = _state_bytes(state), shutil.disk_usage(directory).free
        if free < needed:
            raise self._error(
                step, kept, f"it needs about {needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free"
            )
        try:
            with _failures_held():
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(_to_saveable(state)), data=ocp.args.JsonSave(data_state)
                    ),
                    metrics=None if val_loss is None else {"val_loss": float(val_loss)},
                    force=True,
                )
                self.manager.wait_until_finished()
        except Exception as e:
            for unfinished in (directory / str(step), *directory.glob(f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(unfinished, ignore_errors=True)
            raise self._error(step, kept, _reason(e) + "; its unfinished folder was removed") from e

    def _error(self, step: int, kept: list[int], why: str) -> CheckpointError:
        resume = (
            f"run the same command again to resume from step {kept[-1]}"
            if kept
            else "run the same command again to start over"
        )
        return CheckpointError(
            f"the checkpoint at step {step} could not be written to {self.manager.directory}: "
            f"{why}. The earlier checkpoints (steps {kept}) are kept; free some space and {resume}"
        )

    def restore_latest(self, like: TrainState) -> Optional[tuple[TrainState, dict]]:
        """The newest checkpoint that restores, as (state, data-iterator state); broken ones are skipped.

        Only `like`'s shapes, dtypes and shardings are read (arrays or ShapeDtypeStructs): the state is restored
        where `like` lives, on whichever mesh the checkpoint was saved from; host (numpy) leaves restore as numpy.
        Nothing is copied from the device (3 GB for mulm_1gb's state), and a run without checkpoints allocates
        nothing.
        """
        steps = self.steps()
        target = jax.tree.map(_restore_target, _to_saveable(like)) if steps else None
        for step in reversed(steps):
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
                )
            except Exception as e:  # a torn or corrupt checkpoint: fall back to the one before it
                log.warning(
                    "checkpoint %d could not be restored (%s: %s); trying the one before it", step, type(e).__name__, e
                )
                continue
            s = restored["state"]
            return TrainState(step=s["step"], params=s["params"], opt_state=s["opt_state"], rng=s["rng"]), restored[
                "data"
            ]
        return None

    def close(self) -> None:
        self.manager.close()
