"""Optimizers: decoupled weight decay on kernels only, and clipping by global norm, for every optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_params, tiny_model
from mulm_jax.config import TrainConfig
from mulm_jax.models import build_model
from mulm_jax.train.optimizer import make_optimizer, make_schedule

OPTIMIZERS = ["adamw", "lion", "adafactor", "sgd"]


def optimizer(name: str, **settings) -> optax.GradientTransformation:
    """`name` at a constant learning rate, with no decay or clipping unless `settings` ask for them."""
    return make_optimizer(TrainConfig(**{"optimizer": name, "lr": 0.01, "warmup_steps": 0, "schedule": "constant",
                                         "weight_decay": 0.0, "grad_clip": 0.0, **settings}))


def flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_shrinks_kernels_by_lr_times_rate_and_nothing_else(name):
    model = build_model(tiny_model(use_bias=True, positional="learned", tie_embeddings=False))
    params = random_params(model, jnp.zeros((1, 4), jnp.int32))["params"]
    tx = optimizer(name, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)  # no gradient: the update is the decay alone
    updates = flat(jax.jit(tx.update)(zeros, tx.init(params), params)[0])
    for path, p in flat(params).items():
        decayed = path.endswith("/kernel")  # dense weight matrices, the output head's included
        expected = -0.01 * 0.5 * p if decayed else np.zeros_like(p)
        np.testing.assert_allclose(updates[path], expected, rtol=1e-5, atol=1e-9, err_msg=path)
    names = set(updates)
    assert {"embedder/token/embedding", "embedder/position/embedding", "embedder/head/kernel",
            "decoder/layer_0/ffn/up/bias", "decoder/layer_0/ffn_norm/scale", "decoder/final_norm/bias"} <= names


def by_hand(name: str, grads: list[dict], params: dict, lr: float, b1: float, b2: float, wd: float) -> list[dict]:
    """The updates of AdamW, Lion and SGD with momentum, step by step from their papers' formulas (kernels decayed)."""
    decay = {path: wd if path.endswith("kernel") else 0.0 for path in params}
    m = {path: np.zeros_like(p) for path, p in params.items()}
    v = {path: np.zeros_like(p) for path, p in params.items()}
    updates = []
    for t, g in enumerate(grads, start=1):
        step = {}
        for path, p in params.items():
            if name == "adamw":
                m[path] = b1 * m[path] + (1 - b1) * g[path]
                v[path] = b2 * v[path] + (1 - b2) * g[path] ** 2
                adam = m[path] / (1 - b1**t) / (np.sqrt(v[path] / (1 - b2**t)) + 1e-8)
                step[path] = -lr * (adam + decay[path] * p)
            elif name == "lion":
                step[path] = -lr * (np.sign(b1 * m[path] + (1 - b1) * g[path]) + decay[path] * p)
                m[path] = b2 * m[path] + (1 - b2) * g[path]
            else:  # sgd: the decay joins the gradient, momentum accumulates both
                m[path] = b1 * m[path] + g[path] + decay[path] * p
                step[path] = -lr * m[path]
        updates.append(step)
    return updates


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_follows_its_update_rule_with_the_configured_betas(name):
    rng = np.random.default_rng(1)
    params = {"w": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)}, "b": {"bias": np.ones(3, np.float32)}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]
    wd = 0.0 if name == "adafactor" else 0.1  # adafactor's decay: the test above
    tx = optimizer(name, beta1=0.8, beta2=0.95, weight_decay=wd)
    if name == "adafactor":  # factored second moments: optax's own adafactor is the reference
        reference, ref_state = optax.adafactor(0.01), optax.adafactor(0.01).init(params)
        expected = []
        for g in grads:
            update, ref_state = reference.update(g, ref_state, params)
            expected.append(flat(update))
    else:
        expected = by_hand(name, [flat(g) for g in grads], flat(params), 0.01, 0.8, 0.95, wd)
    state = tx.init(params)
    for g, want in zip(grads, expected):
        got, state = tx.update(g, state, params)
        for path, value in flat(got).items():
            np.testing.assert_allclose(value, want[path], rtol=1e-4, atol=1e-7, err_msg=path)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_clipping_gives_the_updates_of_gradients_scaled_down_to_the_clip_norm(name):
    params = {"w": {"kernel": jnp.ones((4, 3))}, "b": {"bias": jnp.ones(3)}}
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), jnp.float32), params)
             for scale in (3.0, 0.05, 1.0)]  # global norms about 10, 0.2 and 3: clipped, kept, clipped
    clipped, plain = optimizer(name, grad_clip=0.5), optimizer(name)
    clipped_state, plain_state = clipped.init(params), plain.init(params)
    clipped_update, plain_update = jax.jit(clipped.update), jax.jit(plain.update)
    for g in grads:
        norm = float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g))))
        by_hand = jax.tree.map(lambda x: x * min(1.0, 0.5 / norm), g)
        got, clipped_state = clipped_update(g, clipped_state, params)
        want, plain_state = plain_update(by_hand, plain_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, want)


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_the_warmup_climbs_from_zero_to_lr_in_warmup_steps(warmup):
    lr = make_schedule(TrainConfig(lr=0.01, warmup_steps=warmup, steps=100, schedule="constant"))
    np.testing.assert_allclose([float(lr(step)) for step in range(warmup + 2)],
                               [0.01 * step / warmup for step in range(warmup)] + [0.01, 0.01], rtol=1e-6)
