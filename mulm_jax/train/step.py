"""The loss, and the train / eval steps: pure functions of (state, batch), pmapped over the local devices."""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

AXIS = "devices"


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw PRNG key data (uint32); dropout keys are folded from it per step and device


def token_loss_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array, pad_id: Optional[int]) -> dict[str, jax.Array]:
    """Summed next-token cross-entropy and correct predictions over non-pad targets, and their count."""
    weight_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
    if pad_id is not None:
        weight_BxT = (targets_BxT != pad_id).astype(jnp.float32)
    nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    return {"loss_sum": (nll_BxT * weight_BxT).sum(), "correct_sum": (correct_BxT * weight_BxT).sum(),
            "count": weight_BxT.sum()}


def model_logits(model: nn.Module, params: Any, inputs_BxT: jax.Array, *, rng: Optional[jax.Array],
                 deterministic: bool) -> tuple[jax.Array, slice]:
    """Logits, and which target positions they predict (the model's `window_inputs`: an encoder-decoder model
    reads the first half of each window as its source and predicts the second half)."""
    rngs = {"dropout": rng} if rng is not None else {}
    inputs, predicted = model.window_inputs(inputs_BxT)
    return model.apply({"params": params}, *inputs, deterministic=deterministic, rngs=rngs), predicted


def batch_sums(model: nn.Module, params: Any, batch: dict[str, jax.Array], pad_id: Optional[int],
               rng: Optional[jax.Array] = None, deterministic: bool = True) -> dict[str, jax.Array]:
    logits, predicted = model_logits(model, params, batch["inputs"], rng=rng, deterministic=deterministic)
    return token_loss_sums(logits, batch["targets"][:, predicted], pad_id)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, accum_steps: int, pad_id: Optional[int],
               lr_schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on this device's share of the global batch, run inside pmap over AXIS.

    The per-device batch is cut into `accum_steps` micro-batches whose gradient sums are added up; gradient and
    token sums are then averaged over all devices (lax.pmean), so the update is that of the mean loss over every
    non-pad target of the global batch, whatever the device count or accumulation.
    """
    key = jax.random.wrap_key_data(state.rng)
    rng = jax.random.fold_in(jax.random.fold_in(key, state.step), jax.lax.axis_index(AXIS))

    def accumulate(carry, inputs):
        i, mb = inputs

        def loss_sum(params):
            sums = batch_sums(model, params, mb, pad_id, jax.random.fold_in(rng, i), deterministic=False)
            return sums["loss_sum"], sums

        (_, sums), grads = jax.value_and_grad(loss_sum, has_aux=True)(state.params)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct_sum", "count")}
    if accum_steps == 1:  # no loop in the common case
        (grad_sum, sums), _ = accumulate((zero_grads, zero_sums), (0, batch))
    else:
        micro = jax.tree.map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)
        (grad_sum, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), (jnp.arange(accum_steps), micro))
    grad_sum, sums = jax.lax.pmean((grad_sum, sums), AXIS)
    count = jnp.maximum(sums["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grad_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": sums["loss_sum"] / count, "accuracy": sums["correct_sum"] / count,
               "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: nn.Module, pad_id: Optional[int]
              ) -> dict[str, jax.Array]:
    """Token sums over this device's share of an evaluation batch, summed over all devices."""
    return jax.lax.psum(batch_sums(model, params, batch, pad_id), AXIS)


def device_sharding(devices: int) -> jax.sharding.NamedSharding:
    """Arrays split along their leading axis over the first `devices` local devices: where pmap puts its inputs
    and outputs."""
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:devices]), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate_on_host(tree: Any, devices: int) -> Any:
    """One copy per local device along a new leading axis, as host (numpy) arrays: views, no copies."""
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))), tree)


def replicated_like(tree: Any, devices: int) -> Any:
    """The shapes, dtypes and placement of replicate(tree, devices) for a tree of arrays or ShapeDtypeStructs,
    without the arrays: what a pmapped step is compiled ahead of time for (`.lower(...)`) so that its calls with
    replicated device arrays find that program."""
    sharding = device_sharding(devices)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((devices, *x.shape), x.dtype, sharding=sharding), tree)


def replicate(tree: Any, devices: int) -> Any:
    """One copy per local device along a new leading axis, placed on the devices as pmap takes it.

    Placed, not left as numpy arrays: a pmapped step called first with host arrays and then with its own
    (device) outputs compiles twice.
    """
    return jax.device_put(replicate_on_host(tree, devices), device_sharding(devices))


def pmapped_steps(model: nn.Module, tx: optax.GradientTransformation, accum_steps: int, pad_id: Optional[int],
                  lr_schedule: optax.Schedule) -> tuple[Any, Any]:
    """(train_step, eval_step) pmapped over the local devices; the train state is donated."""
    train = jax.pmap(functools.partial(train_step, model=model, tx=tx, accum_steps=accum_steps, pad_id=pad_id,
                                       lr_schedule=lr_schedule), axis_name=AXIS, donate_argnums=(0,))
    evaluate = jax.pmap(functools.partial(eval_step, model=model, pad_id=pad_id), axis_name=AXIS)
    return train, evaluate
