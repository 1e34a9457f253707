"""A trained run, loaded for inference: `load_model(run_dir)` -> model, params, tokenizer and config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from mulm_jax.config import Config
from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.errors import MulmError
from mulm_jax.models import build_model
from mulm_jax.models.info import param_shapes
from mulm_jax.models.layers import per_layer, per_layer_config
from mulm_jax.runs import CHECKPOINTS, checkpoint_manager, is_run, read_config, read_pairs_record


class InferenceError(MulmError):
    """A request or run folder that inference cannot use; the message says what was expected."""


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    params: Any
    tokenizer: Tokenizer
    config: Config
    step: int  # the training step of the checkpoint
    run_dir: Path
    # An encoder-decoder trained on pairs: the id its decoder starts from, after a prompt read as the source (the
    # engine appends it); None: the prompt's last token starts the decoder, as in training on text windows.
    decoder_start: Optional[int] = None


def load_model(run_dir: str | Path, step: Optional[int] = None) -> LoadedModel:
    """The parameters of the newest checkpoint of a run folder (or of `step`), with its config and tokenizer.

    Only the parameters are read from the checkpoint (not the optimizer state), as numpy arrays on the host. A run
    trained with model.scan_layers comes back per layer (`layer_0` ...), its config's model.scan_layers false: the
    engine, inspection, evaluation and export see one layout.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINTS
    if not is_run(run_dir) or not ckpt_dir.is_dir():
        raise InferenceError(
            f"{str(run_dir)!r} is not a run folder: expected config.yaml and checkpoints/ in it "
            "(the --workdir of train.py)"
        )
    try:
        config = read_config(run_dir)
    except MulmError as e:
        raise InferenceError(str(e)) from e
    tokenizer = Tokenizer.load(run_dir)
    target = {"params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(config.model))}
    manager = checkpoint_manager(run_dir)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise InferenceError(f"{ckpt_dir} holds no checkpoint yet")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise InferenceError(f"{ckpt_dir} has no checkpoint at step {step}; it has steps {steps}")
        # numpy arrays, whatever mesh the run was saved from
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
            ),
        )
    finally:
        manager.close()
    config = per_layer_config(config)
    pairs = read_pairs_record(run_dir) if config.model.architecture == "encoder_decoder" else None
    return LoadedModel(
        model=build_model(config.model),
        params=per_layer(restored["state"]["params"]),
        tokenizer=tokenizer,
        config=config,
        step=int(step),
        run_dir=run_dir,
        decoder_start=None if pairs is None else pairs["decoder_start_id"],
    )
