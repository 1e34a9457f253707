"""The run folder's one owner: where its parts live (the config, the checkpoints, the metrics rows) and how they are
opened, for training, inference, evaluation, inspection, the API, the benchmarks and the tests alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # orbax is imported where a checkpoint is opened: reading metrics needs none of it
    import orbax.checkpoint as ocp

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
ITEMS = ("state", "data")  # each checkpoint step: the train state (or the parameters alone) and the data position


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every row of the run's metrics.jsonl, in order; a last line still being written by a live run is skipped."""
    rows = []
    for line in metrics_path(run_dir).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def checkpoint_manager(run_dir: str | Path,
                       options: Optional[ocp.CheckpointManagerOptions] = None) -> ocp.CheckpointManager:
    """orbax's manager of `RUN_DIR/checkpoints/<step>/{state,data}` (synchronous saves unless `options` say
    otherwise)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager((Path(run_dir) / CHECKPOINTS).resolve(), item_names=ITEMS,
                                 options=options or ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
