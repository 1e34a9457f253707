"""The train step's gradient: the mean over every non-pad target on any devices, clipped; encoder-decoder steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support import ROOT, MeshSteps, fresh_state, random_ids, random_params, tiny_model, xla_flags
from mulm_jax.config import MeshConfig, TrainConfig
from mulm_jax.models import build_model
from mulm_jax.train.optimizer import make_optimizer, make_schedule, muon_dimension_numbers
from mulm_jax.train.mesh import BATCH, MeshError, make_mesh, shaped
from mulm_jax.train.step import TrainState

PAD = 0


def sgd(**settings) -> TrainConfig:
    """Plain SGD at learning rate 1: a step moves the parameters by minus the (clipped) gradient."""
    return TrainConfig(
        **{
            "optimizer": "sgd",
            "lr": 1.0,
            "beta1": 0.0,
            "warmup_steps": 0,
            "schedule": "constant",
            "weight_decay": 0.0,
            "grad_clip": 0.0,
            **settings,
        }
    )


def padded_batch() -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets [8, 8]; the rows hold 2, 8, 5, 8, 1, 3, 8 and 6 real targets, so each device's share (of
    up to 4 devices, 2 micro-batches) has its own count."""
    ids = random_ids(8, 9, seed=3)
    ids[ids == PAD] = 1
    targets = ids[:, 1:].copy()
    for row, real in enumerate((2, 8, 5, 8, 1, 3, 8, 6)):
        targets[row, real:] = PAD
    return ids[:, :-1], targets


def reference_gradient(model, params, inputs, targets) -> tuple[float, dict]:
    """The mean next-token loss over the non-pad targets of the whole batch, and its gradient, on one device."""

    def loss(p):
        log_probs = jax.nn.log_softmax(model.apply({"params": p}, inputs), axis=-1)
        nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        real = targets != PAD
        return jnp.sum(jnp.where(real, nll, 0.0)) / jnp.sum(real)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), grads


def one_step(cfg: TrainConfig, model, params, inputs, targets, mesh: MeshConfig = MeshConfig()):
    """(parameter change, metrics) of one train step on a mesh of this process's devices."""
    tx = make_optimizer(cfg)
    steps = MeshSteps(model, tx, cfg.grad_accum_steps, PAD, make_schedule(cfg), params, mesh)
    new_state, metrics = steps.train(steps.place(fresh_state(tx, params)), steps.batch(inputs, targets))
    return jax.tree.map(np.subtract, jax.device_get(new_state.params), params), jax.device_get(metrics)


def global_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def device_errors(meshes: list[tuple[int, int]]) -> dict:
    """Run with several host devices: for each (data, fsdp) mesh, how far one SGD step's update and grad_norm are
    from the one-device gradient of the mean loss, without and with gradient accumulation, and how many of the
    new state's parameter arrays are split over the devices."""
    model = build_model(tiny_model())
    inputs, targets = padded_batch()
    params = random_params(model, inputs)["params"]
    loss, grads = reference_gradient(model, params, inputs, targets)
    out = {"devices": jax.device_count(), "norm": global_norm(grads), "loss": loss}
    for data, fsdp in meshes:
        tx = make_optimizer(sgd())
        steps = MeshSteps(model, tx, 1, PAD, make_schedule(sgd()), params, MeshConfig(data=data, fsdp=fsdp))
        new_state, _ = steps.train(steps.place(fresh_state(tx, params)), steps.batch(inputs, targets))
        split = [x for x in jax.tree.leaves(new_state.params) if not x.sharding.is_fully_replicated]
        row = {"split": len(split), "arrays": len(jax.tree.leaves(params))}
        # Muon splits its stacked Newton-Schulz iterations over the data devices (train.muon): the same update of
        # each matrix (the other parameters are AdamW's, which turns the key bias's zero gradient's noise into
        # steps of the learning rate's size)
        muon = sgd(optimizer="muon", lr=0.01)
        delta, _ = one_step(muon, model, params, inputs, targets, MeshConfig(data=data, fsdp=fsdp))
        tx = make_optimizer(muon)
        want = jax.jit(tx.update)(grads, tx.init(params), params)[0]
        errors = jax.tree.map(lambda d, w: float(np.max(np.abs(d - w))), delta, want)
        matrices = muon_dimension_numbers(params)
        row["muon_error"] = max(
            e
            for e, m in zip(
                jax.tree.leaves(errors), jax.tree.leaves(matrices, is_leaf=lambda m: m is None or isinstance(m, tuple))
            )
            if m is not None
        )
        for accum in (1, 2):
            delta, metrics = one_step(
                sgd(grad_accum_steps=accum), model, params, inputs, targets, MeshConfig(data=data, fsdp=fsdp)
            )
            error = jax.tree.map(lambda d, g: float(np.max(np.abs(d + g))), delta, grads)
            row[f"accum{accum}"] = {
                "update_error": max(jax.tree.leaves(error)),
                "grad_norm": float(metrics["grad_norm"]),
                "loss": float(metrics["loss"]),
            }
        out[f"{data}x{fsdp}"] = row
    return out


@pytest.mark.parametrize(
    "devices, meshes",
    [(2, [(2, 1), (1, 2)]), pytest.param(4, [(4, 1), (2, 2), (1, 4)], marks=pytest.mark.slow)],  # 4: about 30 s
)
def test_every_mesh_steps_along_the_one_device_gradient_of_the_mean_loss(devices, meshes):
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(f"--xla_force_host_platform_device_count={devices}"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT / "tests"),
    }  # support.py; this module from the cwd
    script = f"import json, test_train_step; print(json.dumps(test_train_step.device_errors({meshes})))"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["devices"] == devices
    for data, fsdp in meshes:
        row = out[f"{data}x{fsdp}"]
        # fsdp splits every parameter array with an axis it divides (here all but the norm scales' and biases'
        # few odd ones: at least half of them); data parallelism splits none.
        assert (row["split"] >= row["arrays"] // 2) if fsdp > 1 else row["split"] == 0, row
        assert row["muon_error"] < 1e-6, (data, fsdp, row)
        for accum in ("accum1", "accum2"):
            assert row[accum]["update_error"] < 1e-6, (data, fsdp, row)
            np.testing.assert_allclose(row[accum]["grad_norm"], out["norm"], rtol=1e-5, err_msg=f"{data}x{fsdp}")
            np.testing.assert_allclose(row[accum]["loss"], out["loss"], rtol=1e-6, err_msg=f"{data}x{fsdp}")


def test_a_mesh_that_does_not_cover_the_devices_is_refused_with_the_sizes():
    with pytest.raises(MeshError, match=r"train.mesh data=0 x fsdp=3 does not cover the 1 device\(s\)"):
        make_mesh(MeshConfig(fsdp=3))


def test_a_clipped_step_moves_along_the_gradient_by_the_clip_norm_and_reports_the_norm_before_clipping():
    model = build_model(tiny_model())
    inputs, targets = padded_batch()
    params = random_params(model, inputs)["params"]
    _, grads = reference_gradient(model, params, inputs, targets)
    norm = global_norm(grads)
    delta, metrics = one_step(sgd(grad_clip=0.5 * norm), model, params, inputs, targets)
    jax.tree.map(lambda d, g: np.testing.assert_allclose(d, -0.5 * np.asarray(g), atol=1e-6), delta, grads)
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)


def test_a_step_reports_loss_accuracy_and_learning_rate_and_advances_and_donates_its_state():
    model = build_model(tiny_model())
    inputs, targets = padded_batch()
    one_target = np.full_like(targets, PAD)
    one_target[0, 0] = targets[0, 0]  # the loss is this target's loss, not half of it
    params = random_params(model, inputs)["params"]
    cfg = TrainConfig(lr=1e-2, warmup_steps=10, weight_decay=0.0)
    tx, schedule = make_optimizer(cfg), make_schedule(cfg)
    steps = MeshSteps(model, tx, 1, PAD, schedule, params)
    predicted = np.asarray(model.apply({"params": params}, inputs)).argmax(-1)
    for batch_targets in (targets, one_target):
        state = steps.place(fresh_state(tx, params, step=3))
        new_state, metrics = steps.train(state, steps.batch(inputs, batch_targets))
        loss, grads = reference_gradient(model, params, inputs, batch_targets)
        real = batch_targets != PAD
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
        np.testing.assert_allclose(metrics["accuracy"], (predicted == batch_targets)[real].mean(), rtol=1e-6)
        np.testing.assert_allclose(metrics["lr"], schedule(3), rtol=1e-7)  # the step's own, mid warm-up
        assert int(new_state.step) == 4
        # The optimizer's state moved on with the parameters (AdamW's moments now hold this gradient) ...
        _, expected_opt_state = tx.update(grads, tx.init(params), params)
        chex.assert_trees_all_close(jax.device_get(new_state.opt_state), expected_opt_state, atol=1e-6)
        # ... and the old state's buffers were donated to the new one (the step holds one copy of the model).
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
    assert 0.0 < (predicted == targets)[targets != PAD].mean() < 1.0  # some predictions right, some wrong


def test_gradient_accumulation_shrinks_the_steps_working_memory():
    # Micro-batches are there so that a batch too large for the device still trains: the compiled step's scratch
    # memory (XLA's own account of it) falls with their count. The same batch of 32 windows of 64 tokens:
    model = build_model(tiny_model(max_seq_len=64))
    params = random_params(model, np.ones((1, 64), np.int32))["params"]
    scratch = {}
    for accum in (1, 2, 4):
        tx = make_optimizer(sgd(grad_accum_steps=accum))
        steps = MeshSteps(model, tx, accum, PAD, make_schedule(sgd()), params)
        batch = steps.batch(np.ones((32, 64), np.int32), np.ones((32, 64), np.int32))
        state = steps.place(fresh_state(tx, params))
        scratch[accum] = steps.train.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    assert scratch[2] < 0.7 * scratch[1] and scratch[4] < 0.7 * scratch[2], scratch


def test_dropout_draws_a_new_mask_each_step_and_micro_batch_and_evaluation_draws_none():
    model = build_model(tiny_model(dropout=0.5))
    inputs, targets = padded_batch()
    params = random_params(model, inputs)["params"]
    row, pad_row = (inputs[1:2], targets[1:2]), (inputs[1:2], np.full_like(targets[1:2], PAD))
    tx = make_optimizer(sgd())
    twice = MeshSteps(model, tx, 2, PAD, make_schedule(sgd()), params)
    once = MeshSteps(model, tx, 1, PAD, make_schedule(sgd()), params)

    def loss(step, accum, *rows) -> float:
        steps = twice if accum == 2 else once
        batch = steps.batch(np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]))
        _, metrics = steps.train(steps.place(fresh_state(tx, params, step)), batch)
        return float(metrics["loss"])

    sums = once.evaluate(once.place_params(params), once.batch(*row))
    evaluated = float(sums["loss_sum"] / sums["count"])
    np.testing.assert_allclose(evaluated, reference_gradient(model, params, *row)[0], rtol=1e-6)  # no dropout
    first = loss(0, 1, row)
    assert abs(first - evaluated) > 1e-3  # training drops activations
    assert loss(0, 1, row) == first  # the mask is a function of the state: the same step draws it again
    assert abs(loss(1, 1, row) - first) > 1e-3  # the next step draws another
    # Two micro-batches: the first (this row) draws the one-micro-batch step's mask, the second (the same row,
    # so the same loss under the same mask) another: the all-pad second row adds nothing, the real one does.
    np.testing.assert_allclose(loss(0, 2, row, pad_row), first, rtol=1e-6)
    assert abs(loss(0, 2, row, row) - first) > 1e-3


def test_an_encoder_decoder_step_predicts_the_second_half_of_each_window_from_the_first():
    cfg = tiny_model(
        architecture="encoder_decoder", positional="sinusoidal", norm_position="post", ffn="relu", scale_embeddings=True
    )
    model = build_model(cfg)
    ids = random_ids(4, 13, seed=5)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    params = random_params(model, inputs[:, :6], inputs[:, 6:])["params"]
    logits = jax.jit(model.apply)({"params": params}, inputs[:, :6], inputs[:, 6:])  # source: 0-5; target: 6-11
    first_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, targets[:, 6:]).mean())
    tc = TrainConfig(lr=1e-2, warmup_steps=0, schedule="constant", steps=20)
    tx = make_optimizer(tc)
    steps = MeshSteps(model, tx, 1, None, make_schedule(tc), params)
    state, batch = steps.place(fresh_state(tx, params)), steps.batch(inputs, targets)
    losses = []
    for _ in range(20):  # the same batch again and again: a model that learns fits it
        state, metrics = steps.train(state, batch)
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[0], first_loss, rtol=1e-5)
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_train_step_compiles_once_and_the_evaluation_compiled_ahead_serves_every_later_call(caplog):
    model = build_model(tiny_model())
    inputs, targets = padded_batch()
    params = random_params(model, inputs)["params"]
    tc = sgd()
    tx = make_optimizer(tc)
    host = TrainState(step=np.int32(0), params=params, opt_state=tx.init(params), rng=np.zeros(2, np.uint32))
    steps = MeshSteps(model, tx, 1, PAD, make_schedule(tc), params)
    batch_like = jax.ShapeDtypeStruct(inputs.shape, jnp.int32, sharding=jax.sharding.NamedSharding(steps.mesh, BATCH))
    with jax.log_compiles():
        # as the loop does: both compiled from shapes alone, beside model init and the first step
        train = steps.train.lower(
            shaped(host, steps.placement), {"inputs": batch_like, "targets": batch_like}
        ).compile()
        evaluate = steps.evaluate.lower(
            shaped(params, steps.placement.params), {"inputs": batch_like, "targets": batch_like}
        ).compile()
        state, batch = steps.place(host), steps.batch(inputs, targets)
        for _ in range(3):
            state, metrics = train(state, batch)
        sums = evaluate(state.params, batch)
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Finished XLA compilation")]
    assert len(compiled) == 2, compiled  # one train step, one eval step
    assert int(jax.device_get(state.step)) == 3 and float(sums["count"]) == (targets != PAD).sum()
