"""A trained run under evaluation: loaded under another positional setting if asked, and scored window by window
by one jitted function (the parameters an argument, so every window of one length compiles once)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mulm_jax.config import ModelConfig, config_from_dict
from mulm_jax.errors import MulmError
from mulm_jax.infer.loading import LoadedModel, load_model
from mulm_jax.models import build_model
from mulm_jax.models.info import param_shapes
from mulm_jax.nn.positional import TABLES
from mulm_jax.train.init_from import POSITION_TABLE, flat_params, param_differences


class EvalError(MulmError):
    """An evaluation that cannot run as asked; the message says what was expected."""


def load_for_eval(run_dir: str | Path, overrides: Sequence[str] = (), step: Optional[int] = None) -> LoadedModel:
    """The run's newest checkpoint (or `step`'s), its model built from its config with `overrides`
    (`model.max_seq_len=1024`, `model.rope_scaling.type=yarn`, ...) on top, without retraining.

    A RoPE scaling whose original_max_seq_len is unset (0) is taken to stretch the context the run was trained at.
    The overridden model must have the trained parameters' names and shapes.
    """
    loaded = load_model(run_dir, step)
    if not overrides:
        return loaded
    trained = loaded.config.model
    cfg = config_from_dict(loaded.config.to_dict(), list(overrides))
    scaling = cfg.model.rope_scaling
    if scaling is not None and not scaling.original_max_seq_len:
        original = (trained.rope_scaling.original_max_seq_len if trained.rope_scaling else 0) or trained.max_seq_len
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(
                cfg.model, rope_scaling=dataclasses.replace(scaling, original_max_seq_len=original)
            ),
        )
    have, want = flat_params(loaded.params), flat_params(param_shapes(cfg.model))
    if POSITION_TABLE in have and POSITION_TABLE in want and have[POSITION_TABLE].shape != want[POSITION_TABLE].shape:
        raise EvalError(_table_message(have[POSITION_TABLE].shape[0], cfg.model.max_seq_len))
    differences = param_differences(have, want)
    if differences:
        raise EvalError(
            f"the run's parameters do not fit the model of --set {' '.join(overrides)} "
            f"({len(differences)} differ):\n  " + "\n  ".join(differences)
        )
    return dataclasses.replace(loaded, model=build_model(cfg.model), config=cfg)


def _table_message(rows: int, context: int) -> str:
    return (
        f"the run's learned position table has {rows} trained rows, so it cannot score a context of {context}: a "
        "learned table does not go past its length without training (train.py --init-from RUN "
        "--extend-positions, at the longer model.max_seq_len)"
    )


def check_context(cfg: ModelConfig, context: int) -> None:
    """EvalError when the model cannot score windows of `context` tokens: an encoder-decoder, or a position table
    (learned, or sinusoidal of model.max_seq_len rows) shorter than the window. RoPE, ALiBi and no positions
    compute any position, so they take windows past model.max_seq_len (zero-shot)."""
    if cfg.architecture != "decoder":
        raise EvalError(f"evaluation scores decoder models; this run is {cfg.architecture!r}")
    if context < 1:
        raise EvalError(f"context={context} must be a positive number of tokens")
    if cfg.positional == "learned" and context > cfg.max_seq_len:
        raise EvalError(_table_message(cfg.max_seq_len, context))
    if cfg.positional in TABLES and context > cfg.max_seq_len:
        raise EvalError(
            f"the sinusoidal table has model.max_seq_len={cfg.max_seq_len} rows, fewer than the context "
            f"{context}; it has no trained values, so --set model.max_seq_len={context} extends it"
        )


class WindowScorer:
    """Next-token loss and greedy choice at every position of [B, T] windows of a decoder model.

    `traces` counts compilations: one per window shape, however many windows are scored.
    """

    def __init__(self, loaded: LoadedModel):
        self.model, self.params = loaded.model, jax.device_put(loaded.params)
        self.traces = 0
        self._score = jax.jit(self._forward)

    def _forward(self, params: Any, inputs_BxT: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
        self.traces += 1
        logits_BxTxV = self.model.apply({"params": params}, inputs_BxT)
        nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
        return nll_BxT, jnp.argmax(logits_BxTxV, axis=-1).astype(jnp.int32)

    def __call__(self, inputs_BxT: np.ndarray, targets_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nll float32 [B, T], greedy ids int32 [B, T]) on the host."""
        return jax.device_get(self._score(self.params, inputs_BxT, targets_BxT))


def batched(rows: np.ndarray, batch: int) -> list[tuple[np.ndarray, int]]:
    """`rows` cut into batches of exactly `batch` rows (the last padded with copies of row 0), each with its number
    of real rows: every batch has one shape, so a jitted function compiles once for all of them."""
    out = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        real = len(part)
        if real < batch:
            part = np.concatenate([part, np.repeat(rows[:1], batch - real, axis=0)])
        out.append((part, real))
    return out
