"""Optimizers: decoupled weight decay on kernels only, and clipping by global norm, for every optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support import random_params, tiny_model
from mulm_jax.config import TrainConfig
from mulm_jax.models import build_model
from mulm_jax.train.optimizer import make_optimizer, make_schedule, muon_dimension_numbers

OPTIMIZERS = ["adamw", "lion", "adafactor", "sgd"]


def optimizer(name: str, **settings) -> optax.GradientTransformation:
    """`name` at a constant learning rate, with no decay or clipping unless `settings` ask for them."""
    return make_optimizer(
        TrainConfig(
            **{
                "optimizer": name,
                "lr": 0.01,
                "warmup_steps": 0,
                "schedule": "constant",
                "weight_decay": 0.0,
                "grad_clip": 0.0,
                **settings,
            }
        )
    )


def flat_with_none(tree) -> dict[str, object]:
    """Leaves by path, None and Muon's (input axes, output axes) pairs kept as leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None or isinstance(x, tuple))[0]
    return {"/".join(k.key for k in path): v for path, v in leaves}


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
    assert {
        "embedder/token/embedding",
        "embedder/position/embedding",
        "embedder/head/kernel",
        "decoder/layer_0/ffn/up/bias",
        "decoder/layer_0/ffn_norm/scale",
        "decoder/final_norm/bias",
    } <= names


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


def test_muon_takes_its_momentum_weight_decay_and_adam_betas_from_the_config():
    # optax's Muon with every setting spelled out is the reference; each value differs from optax's default
    # (momentum 0.95, decay 0, Adam betas 0.9 / 0.999), so a setting not passed on shows.
    rng = np.random.default_rng(2)
    params = {"w": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)}, "b": {"bias": np.ones(3, np.float32)}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]
    tx = optimizer("muon", muon_lr=0.02, muon_momentum=0.8, beta1=0.7, beta2=0.9, weight_decay=0.1)
    reference = optax.contrib.muon(
        0.02,
        beta=0.8,
        weight_decay=0.1,
        adam_b1=0.7,
        adam_b2=0.9,
        adam_learning_rate=0.01,
        muon_weight_dimension_numbers=muon_dimension_numbers,
    )
    state, ref_state = tx.init(params), reference.init(params)
    for g in grads:
        got, state = tx.update(g, state, params)
        want, ref_state = reference.update(g, ref_state, params)
        for path, value in flat(got).items():
            np.testing.assert_allclose(value, flat(want)[path], rtol=1e-5, atol=1e-8, err_msg=path)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_clipping_gives_the_updates_of_gradients_scaled_down_to_the_clip_norm(name):
    params = {"w": {"kernel": jnp.ones((4, 3))}, "b": {"bias": jnp.ones(3)}}
    rng = np.random.default_rng(0)
    grads = [
        jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), jnp.float32), params)
        for scale in (3.0, 0.05, 1.0)
    ]  # global norms about 10, 0.2 and 3: clipped, kept, clipped
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
    np.testing.assert_allclose(
        [float(lr(step)) for step in range(warmup + 2)],
        [0.01 * step / warmup for step in range(warmup)] + [0.01, 0.01],
        rtol=1e-6,
    )


def test_wsd_holds_lr_after_the_warmup_then_cools_down_linearly_over_the_last_fraction():
    lr = make_schedule(TrainConfig(lr=0.01, min_lr=0.001, warmup_steps=2, steps=12, schedule="wsd", cooldown_frac=0.25))
    np.testing.assert_allclose(
        [float(lr(step)) for step in range(13)], [0.0, 0.005] + [0.01] * 8 + [0.007, 0.004, 0.001], rtol=1e-5
    )
    muon_lr = make_schedule(TrainConfig(lr=0.01, min_lr=0.001, warmup_steps=2, steps=12, schedule="wsd"), peak=0.04)
    np.testing.assert_allclose([float(muon_lr(s)) for s in (1, 5, 12)], [0.02, 0.04, 0.004], rtol=1e-5)


def newton_schulz(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """Muon's quintic Newton-Schulz iteration (Keller Jordan's coefficients) towards the nearest orthogonal matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (np.linalg.norm(g) + 1e-8)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x if wide else x.T


def test_muon_takes_exactly_the_hidden_weight_matrices_and_adamw_the_rest():
    model = build_model(
        tiny_model(num_layers=2, use_bias=True, positional="learned", tie_embeddings=False, qk_norm=True)
    )
    params = random_params(model, jnp.zeros((1, 4), jnp.int32))["params"]
    labels = {path: dims for path, dims in flat_with_none(muon_dimension_numbers(params)).items()}
    hidden = {
        f"decoder/layer_{i}/{name}/kernel"
        for i in range(2)
        for name in (
            "self_attention/query",
            "self_attention/key",
            "self_attention/value",
            "self_attention/out",
            "ffn/up",
            "ffn/down",
        )
    }
    assert {path for path, dims in labels.items() if dims is not None} == hidden
    assert set(labels) == set(flat(params))  # embeddings, head, norms (QK-norms too) and biases: AdamW
    assert labels["decoder/layer_0/self_attention/query/kernel"] == ((0,), (1, 2))  # [D, H, Dh] as D x H*Dh
    assert labels["decoder/layer_0/self_attention/out/kernel"] == ((0, 1), (2,))  # [H, Dh, D] as H*Dh x D


def test_muon_first_update_of_a_matrix_is_its_orthogonalised_gradient_and_adamw_moves_the_rest():
    model = build_model(tiny_model(use_bias=False, tie_embeddings=False, positional="learned"))
    params = random_params(model, jnp.zeros((1, 4), jnp.int32))["params"]
    grads = random_params(model, jnp.zeros((1, 4), jnp.int32), seed=1)["params"]
    tx = optimizer("muon", muon_lr=0.05)
    updates = flat(jax.jit(tx.update)(grads, tx.init(params), params)[0])
    g = flat(grads)
    for path, (rows, cols) in {
        "decoder/layer_0/ffn/up/kernel": (16, 32),
        "decoder/layer_0/ffn/down/kernel": (32, 16),
        "decoder/layer_0/self_attention/query/kernel": (16, 16),
        "decoder/layer_0/self_attention/out/kernel": (16, 16),
    }.items():
        shape_scale = max(1.0, cols / rows) ** 0.5  # optax's width scaling: sqrt(fan_out / fan_in) when above 1
        want = -0.05 * shape_scale * newton_schulz(g[path].reshape(rows, cols).astype(np.float64))
        np.testing.assert_allclose(updates[path].reshape(rows, cols), want, atol=2e-4, err_msg=path)
    for path in ("embedder/token/embedding", "embedder/head/kernel", "decoder/layer_0/ffn_norm/scale"):
        nesterov = 1 + 0.9 * 0.1 / (1 - 0.9**2)  # Nesterov Adam's first step: this times lr * sign(g) (b1 = 0.9)
        adam = -0.01 * nesterov * np.sign(g[path])
        np.testing.assert_allclose(updates[path], adam, rtol=2e-3, atol=1e-6, err_msg=path)


@pytest.mark.parametrize("scan", [False, True])
def test_stacked_muon_steps_as_optax_muon_over_a_whole_model_and_keeps_its_state_layout(scan):
    # Each shape's matrices are iterated as one stack (train.muon): the same updates as optax's matrix-by-matrix
    # Muon, step after step, for unrolled and scanned layers ([layers, ...] kernels: one matrix per layer), and a
    # state of the same structure, so that a run saved under either resumes under the other.
    model = build_model(tiny_model(num_layers=2, d_ff=48, tie_embeddings=False, scan_layers=scan))
    params = random_params(model, jnp.zeros((1, 4), jnp.int32))["params"]
    grads = [random_params(model, jnp.zeros((1, 4), jnp.int32), seed=s)["params"] for s in (1, 2, 3)]
    cfg = TrainConfig(optimizer="muon", lr=0.01, muon_lr=0.02, warmup_steps=1, steps=10, grad_clip=0.0)
    tx = make_optimizer(cfg)
    reference = optax.contrib.muon(
        make_schedule(cfg, cfg.muon_lr), beta=0.95, weight_decay=0.1, adam_b1=0.9, adam_b2=0.99,
        adam_learning_rate=make_schedule(cfg), muon_weight_dimension_numbers=muon_dimension_numbers,
    )  # fmt: skip
    state, ref_state = tx.init(params), reference.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    update, ref_update = jax.jit(tx.update), jax.jit(reference.update)
    for g in grads:
        got, state = update(g, state, params)
        want, ref_state = ref_update(g, ref_state, params)
        for path, value in flat(got).items():
            np.testing.assert_allclose(value, flat(want)[path], rtol=1e-4, atol=1e-6, err_msg=path)
        params = optax.apply_updates(params, got)
