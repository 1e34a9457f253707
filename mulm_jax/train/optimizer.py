"""Learning-rate schedules and optax optimizers, with weight decay on weight matrices only."""

from __future__ import annotations

from typing import Any, Optional

import jax
import optax
from optax.contrib import MuonDimensionNumbers

from mulm_jax.config import TrainConfig
from mulm_jax.nn.blocks import STACKED
from mulm_jax.train.muon import stacked_muon


def make_schedule(cfg: TrainConfig, peak: Optional[float] = None) -> optax.Schedule:
    """Linear warm-up from 0 to lr over warmup_steps, then cosine / linear decay to min_lr at `steps`, constant, or
    (wsd) constant until the last cooldown_frac of the steps and a linear cool-down to min_lr there.

    peak: the same shape scaled to this peak instead of lr (min_lr scaled alike), for a second parameter group.
    """
    scale = 1.0 if peak is None else peak / cfg.lr
    lr, min_lr = cfg.lr * scale, cfg.min_lr * scale
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.min_lr / cfg.lr)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(lr, min_lr, decay_steps)
    elif cfg.schedule == "wsd":
        cooldown = min(max(round(cfg.steps * cfg.cooldown_frac), 1), decay_steps)
        decay = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, min_lr, cooldown)], [decay_steps - cooldown]
        )
    else:
        decay = optax.constant_schedule(lr)
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for the weight matrices of dense layers; False for norms, biases and embeddings (token and position)."""

    def is_matrix(path, leaf) -> bool:  # a Flax parameter's path: dictionary keys only
        return path[-1].key == "kernel" and leaf.ndim - int(any(p.key == STACKED for p in path)) >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


# Kernels whose input is more than their first axis: the attention's output projection, [H, Dh, D].
_INPUT_AXES = {"out": (0, 1)}


def muon_dimension_numbers(params: Any) -> Any:
    """Per parameter, how Muon sees it as a matrix (input axes x output axes), or None for AdamW: the kernels of
    the hidden layers (attention's [D, H, Dh] query and [H, Dh, D] output as D x H*Dh and H*Dh x D). Embeddings,
    an untied head (all under "embedder"), norms and biases are left to AdamW, as modded-nanogpt does. A scanned
    stack's kernels (model.scan_layers: [layers, ...]) are one matrix per layer: the leading axis is a batch axis."""

    def dims(path, leaf) -> Optional[MuonDimensionNumbers]:
        keys = [p.key for p in path]
        layer_axis = int(STACKED in keys)
        if keys[-1] != "kernel" or leaf.ndim - layer_axis < 2 or "embedder" in keys:
            return None
        inputs = tuple(layer_axis + i for i in _INPUT_AXES.get(keys[-2], (0,)))
        return MuonDimensionNumbers(inputs, tuple(range(inputs[-1] + 1, leaf.ndim)))

    return jax.tree_util.tree_map_with_path(dims, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping by global norm (when grad_clip > 0), then the configured optimizer."""
    lr = make_schedule(cfg)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=decay_mask)
    elif cfg.optimizer == "lion":
        opt = optax.lion(lr, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=decay_mask)
    elif cfg.optimizer == "adafactor":
        # optax adds adafactor's decay after its learning-rate scaling (a step would shrink kernels by weight_decay
        # itself): given no learning rate, and scaled by it afterwards, the decay is lr * weight_decay like the others'.
        opt = optax.chain(
            optax.adafactor(weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask),
            optax.scale_by_schedule(lr),
        )
    elif cfg.optimizer == "muon":
        opt = stacked_muon(
            make_schedule(cfg, cfg.muon_lr),
            muon_dimension_numbers,
            beta=cfg.muon_momentum,
            weight_decay=cfg.weight_decay,
            adam_b1=cfg.beta1,
            adam_b2=cfg.beta2,
            adam_learning_rate=lr,
        )
    else:  # sgd with momentum beta1; weight decay added to the gradient
        opt = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), optax.sgd(lr, momentum=cfg.beta1)
        )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt
