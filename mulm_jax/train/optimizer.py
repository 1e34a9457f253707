"""Learning-rate schedules and optax optimizers, with weight decay on weight matrices only."""

from __future__ import annotations

from typing import Any

import jax
import optax

from mulm_jax.config import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to lr over warmup_steps, then cosine / linear decay to min_lr at `steps`, or constant."""
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr / cfg.lr)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, cfg.min_lr, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for the weight matrices of dense layers; False for norms, biases and embeddings (token and position)."""

    def is_matrix(path, leaf) -> bool:
        return path[-1].key == "kernel" and leaf.ndim >= 2  # a Flax parameter's path: dictionary keys only

    return jax.tree_util.tree_map_with_path(is_matrix, params)


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
        opt = optax.chain(optax.adafactor(weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask),
                          optax.scale_by_schedule(lr))
    else:  # sgd with momentum beta1; weight decay added to the gradient
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                          optax.sgd(lr, momentum=cfg.beta1))
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt
