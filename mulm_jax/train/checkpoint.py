"""Orbax checkpoints of a run: train state, RNG key and data-iterator position; newest N plus the best by val loss."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from mulm_jax.runs import checkpoint_manager
from mulm_jax.train.step import TrainState

log = logging.getLogger(__name__)


def _to_saveable(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": state.rng}


def _restore_target(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        return np.zeros(x.shape, x.dtype)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class Checkpoints:
    """`DIR/checkpoints/<step>/{state,data}`; every process calls save/restore (orbax coordinates them)."""

    def __init__(self, workdir: Path, keep: int):
        self.manager = checkpoint_manager(
            workdir,
            ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,
                preservation_policy=policy.AnyPreservationPolicy([
                    policy.LatestN(n=keep),
                    policy.BestN(get_metric_fn=lambda m: -m["val_loss"], n=1,
                                 keep_checkpoints_without_metrics=False),
                ]),
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict, val_loss: Optional[float] = None) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state)),
                                                         data=ocp.args.JsonSave(data_state)),
                          metrics=None if val_loss is None else {"val_loss": float(val_loss)}, force=True)
        self.manager.wait_until_finished()

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
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
            except Exception as e:  # a torn or corrupt checkpoint: fall back to the one before it
                log.warning("checkpoint %d could not be restored (%s: %s); trying the one before it",
                            step, type(e).__name__, e)
                continue
            s = restored["state"]
            return TrainState(step=s["step"], params=s["params"], opt_state=s["opt_state"],
                              rng=s["rng"]), restored["data"]
        return None

    def close(self) -> None:
        self.manager.close()
