"""Loss by position: the mean validation loss at each position of the context, over windows of the run's
validation split that start fresh (how much each extra token of context helps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.data.assemble import prepare_dataset
from mulm_jax.data.loader import load_tokens
from mulm_jax.infer.loading import InferenceError, LoadedModel

BATCH = 8  # windows per forward pass


def loss_by_position(loaded: LoadedModel, tokens: np.ndarray, max_windows: int = 256) -> np.ndarray:
    """Mean loss [T] at positions 1..T (T: the model's context) over up to `max_windows` consecutive,
    non-overlapping windows of `tokens`, each scored from its own start."""
    if loaded.config.model.architecture != "decoder":
        raise InferenceError("loss by position is measured for decoder-only models")
    T = loaded.config.model.max_seq_len
    windows = min(max_windows, (len(tokens) - 1) // T)
    if windows < 1:
        raise InferenceError(f"the text has {len(tokens)} tokens: loss by position needs at least {T + 1} "
                             f"(one window of the model's context and its next token)")
    starts = np.arange(windows) * T
    model = loaded.model

    @jax.jit
    def losses(params, window_BxT1):
        logits_BxTxV = model.apply({"params": params}, window_BxT1[:, :-1])
        logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
        return -jnp.take_along_axis(logp_BxTxV, window_BxT1[:, 1:, None], axis=-1)[..., 0]

    total_T = np.zeros(T, np.float64)
    for first in range(0, windows, BATCH):
        chunk = starts[first:first + BATCH]
        batch_BxT1 = np.zeros((BATCH, T + 1), np.int32)  # a short last batch is padded and its rows dropped
        for row, start in enumerate(chunk):
            batch_BxT1[row] = tokens[start:start + T + 1]
        total_T += np.asarray(losses(loaded.params, batch_BxT1))[:len(chunk)].sum(axis=0)
    return (total_T / windows).astype(np.float32)


def validation_loss_by_position(loaded: LoadedModel, max_windows: int = 256) -> np.ndarray:
    """loss_by_position over the validation split of the data set the run was trained on."""
    tokens = load_tokens(prepare_dataset(loaded.config.data), "val")
    return loss_by_position(loaded, np.asarray(tokens), max_windows)
