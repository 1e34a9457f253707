"""The run folder's one owner: where its parts live (the config, the tokenizer, the checkpoints, the metrics rows)
and how they are written and opened, for training, inference, evaluation, inspection, the API, the benchmarks and
the tests alike."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mulm_jax.config import Config, ConfigError, dump_config, load_config
from mulm_jax.errors import MulmError

if TYPE_CHECKING:  # orbax is imported where a checkpoint is opened: reading metrics needs none of it
    import orbax.checkpoint as ocp

    from mulm_jax.data.tokenizer import Tokenizer

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PAIRS = "pairs.json"  # a run trained on pairs: their kind, and the id an encoder-decoder's decoder starts from
ITEMS = ("state", "data")  # each checkpoint step: the train state (or the parameters alone) and the data position


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG


def is_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run's config (a run folder, checkpointed or not yet)."""
    return config_path(run_dir).is_file()


def read_config(run_dir: str | Path) -> Config:
    """The run's config; a MulmError naming the file when it is missing or not a valid config."""
    path = config_path(run_dir)
    if not path.is_file():
        raise MulmError(f"{str(run_dir)!r} is not a run folder: expected {CONFIG} in it (the --workdir of train.py)")
    try:
        return load_config(path)
    except ConfigError as e:
        raise MulmError(f"{path}: {e}") from None


def find_runs(root: str | Path, depth: int = 3) -> list[Path]:
    """The run folders at or under `root`, up to `depth` folders down, in path order; a run folder's own
    subfolders (its checkpoints) are not searched."""
    root = Path(root)
    if is_run(root):
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_runs(child, depth - 1)
    return found


def write_run_files(run_dir: str | Path, config: Config, tokenizer: Tokenizer) -> None:
    """The files that make a folder a run: its tokenizer and its config (written to a temporary file, then
    renamed, so that a reader never sees half of it)."""
    tokenizer.save(Path(run_dir))
    path = config_path(run_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(config))
    os.replace(tmp, path)


def write_pairs_record(run_dir: str | Path, manifest: dict) -> None:
    """What generation needs to know of the pairs a run trains on (a data set's manifest): their kind and fields,
    and the id an encoder-decoder's decoder starts from after reading a source."""
    record = {
        "kind": manifest["kind"],
        "fields": manifest["pairs"]["fields"],
        "decoder_start_id": manifest["pairs"]["decoder_start_id"],
        "data_set": manifest["version"],
    }
    path = Path(run_dir) / PAIRS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def read_pairs_record(run_dir: Optional[str | Path]) -> Optional[dict]:
    """The run's record of the pairs it trained on (write_pairs_record); None for a run trained on text."""
    path = None if run_dir is None else Path(run_dir) / PAIRS
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise MulmError(f"{path} is not valid JSON: {e}") from None


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of the run's finished checkpoints, oldest first (none: [])."""
    folder = Path(run_dir) / CHECKPOINTS
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


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


def checkpoint_manager(
    run_dir: str | Path, options: Optional[ocp.CheckpointManagerOptions] = None
) -> ocp.CheckpointManager:
    """orbax's manager of `RUN_DIR/checkpoints/<step>/{state,data}` (synchronous saves unless `options` say
    otherwise)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (Path(run_dir) / CHECKPOINTS).resolve(),
        item_names=ITEMS,
        options=options or ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
    )
