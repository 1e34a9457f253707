"""The induction score of every head during training: one compiled forward pass over repeated random sequences
that reads the attention weights through the model's hook points (as inspect.heads measures it on a loaded run)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mulm_jax.config import ModelConfig
from mulm_jax.inspect.heads import induction_half, induction_scores, induction_sequence
from mulm_jax.models import build_model
from mulm_jax.models.layers import per_layer
from mulm_jax.nn import hooks
from mulm_jax.train.mesh import REPLICATED

SEEDS = 4  # repeated random sequences averaged over, as inspect.heads.head_roles does


def induction_program(
    cfg: ModelConfig, vocab_size: int, params_like: Any, mesh: Mesh
) -> Optional[Callable[[Any], np.ndarray]]:
    """(training params) -> induction score [L, H] of every head of a decoder model (None for an encoder-decoder):
    the mean attention from each token of a repeated random sequence's second copy to the token after its match in
    the first, over SEEDS sequences of `vocab_size` (the tokenizer's) ordinary ids, each two copies of
    induction_half(max_seq_len) tokens. Compiled here for parameters shaped and placed like `params_like` (scanned
    ones are unstacked inside the program); the scores come back replicated on `mesh`."""
    if cfg.architecture != "decoder":
        return None
    model = build_model(dataclasses.replace(cfg, scan_layers=False))  # the model hook points are read from
    half = induction_half(cfg.max_seq_len)
    ids_NxT = np.stack([induction_sequence(vocab_size, half, seed) for seed in range(SEEDS)])
    names = [f"blocks.{layer}.attn.pattern" for layer in range(cfg.num_layers)]

    def scores(params: Any) -> jax.Array:
        if cfg.scan_layers:
            params = per_layer(params)
        with hooks.hooks(keep=set(names)):
            _, state = model.apply({"params": params}, jnp.asarray(ids_NxT), mutable=[hooks.ACTIVATIONS])
        seen = hooks.sown(state[hooks.ACTIVATIONS])
        attention_NxLxHxTxT = jnp.stack([seen[name] for name in names], axis=1).astype(jnp.float32)
        return jnp.mean(jax.vmap(lambda a: induction_scores(a, half))(attention_NxLxHxTxT), axis=0)

    compiled = jax.jit(scores, out_shardings=NamedSharding(mesh, REPLICATED)).lower(params_like).compile()
    return lambda params: np.asarray(jax.device_get(compiled(params)))


def best_head(scores_LxH: np.ndarray) -> dict[str, Any]:
    """The metrics row's fields: the highest induction score and its head, "layer.head"."""
    layer, head = np.unravel_index(int(np.argmax(scores_LxH)), scores_LxH.shape)
    return {"val_induction": float(scores_LxH[layer, head]), "val_induction_head": f"{layer}.{head}"}
