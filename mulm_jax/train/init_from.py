"""Starting a run from another run's parameters (`train.py --init-from RUN[@STEP]`), matched by name and shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from flax import traverse_util

from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.errors import MulmError
from mulm_jax.infer.loading import load_model
from mulm_jax.models.layers import per_layer, stacked
from mulm_jax.nn.blocks import STACKED

RECORD = "init_from.json"  # in the new run folder: where its parameters came from
POSITION_TABLE = "embedder/position/embedding"  # a learned position table, [max_seq_len, d_model]


class InitFromError(MulmError):
    """A source run whose parameters cannot start the new model; the message names what differs."""


def parse_spec(spec: str) -> tuple[Path, Optional[int]]:
    """`RUN` -> (RUN, None: its newest checkpoint); `RUN@STEP` -> (RUN, STEP)."""
    run, sep, step = spec.rpartition("@")
    if not sep:
        return Path(spec), None
    if not step.isdigit() or not run:
        raise InitFromError(f"--init-from {spec!r}: expected RUN or RUN@STEP (STEP a checkpoint's step number)")
    return Path(run), int(step)


def flat_params(params: Any) -> dict[str, Any]:
    """{"embedder/token/embedding": array, ...}: each parameter by its path."""
    return traverse_util.flatten_dict(params, sep="/")


def param_differences(source: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """One line per parameter that is missing on either side or whose shape differs, by name."""
    lines = []
    for name in sorted(source.keys() | target.keys()):
        if name not in source:
            lines.append(f"{name}: not in the source run (the new model has {tuple(target[name].shape)})")
        elif name not in target:
            lines.append(f"{name}: only in the source run {tuple(source[name].shape)}")
        elif tuple(source[name].shape) != tuple(target[name].shape):
            lines.append(
                f"{name}: {tuple(source[name].shape)} in the source run, {tuple(target[name].shape)} in the new model"
            )
    return lines


def start_from(
    spec: str, params: Any, tokenizer: Tokenizer, extend_positions: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The parameters of run `spec` in place of the freshly initialised `params`, and a record of where they
    came from. Only parameters are taken (not the optimizer state, step or data position). A learned position
    table shorter than the new one is extended (its trained rows copied, the new rows kept from `params`) only
    with `extend_positions`. The source comes per layer (load_model); the result has the layout of `params`
    (stacked when the new run has model.scan_layers), whichever layout the source run trained in."""
    run_dir, step = parse_spec(spec)
    source = load_model(run_dir, step)
    if source.tokenizer.serialize() != tokenizer.serialize():
        raise InitFromError(
            f"--init-from {spec}: the source run's tokenizer ({source.tokenizer.kind}, vocab "
            f"{source.tokenizer.vocab_size}) is not the data set's ({tokenizer.kind}, vocab {tokenizer.vocab_size}): "
            "the same ids would stand for other text; train on a data set made with the source run's tokenizer"
        )
    src, new = flat_params(source.params), flat_params(per_layer(params))
    extended = None
    if POSITION_TABLE in src and POSITION_TABLE in new:
        (trained, width), (rows, new_width) = src[POSITION_TABLE].shape, new[POSITION_TABLE].shape
        if rows > trained and width == new_width:
            if not extend_positions:
                raise InitFromError(
                    f"--init-from {spec}: the source run's learned position table has {trained} rows and the new "
                    f"context (model.max_seq_len) needs {rows}; add --extend-positions to copy the {trained} trained "
                    "rows and initialise the others, or keep model.max_seq_len"
                )
            table = np.array(new[POSITION_TABLE], dtype=np.float32)
            table[:trained] = src[POSITION_TABLE]
            src[POSITION_TABLE] = table
            extended = {"from": trained, "to": rows}
    differences = param_differences(src, new)
    if differences:
        raise InitFromError(
            f"--init-from {spec}: the source run's parameters do not match the new model by name "
            f"and shape ({len(differences)} differ):\n  " + "\n  ".join(differences)
        )
    merged = traverse_util.unflatten_dict({name: np.asarray(src[name], dtype=new[name].dtype) for name in new}, sep="/")
    scanned = any(STACKED in name.split("/") for name in flat_params(params))
    record = {"run": str(run_dir.resolve()), "step": source.step, "extended_positions": extended}
    return stacked(merged) if scanned else merged, record
