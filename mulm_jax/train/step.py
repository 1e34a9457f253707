"""The loss, and the train / eval steps: one per-device program (shard_map) inside jit over the training mesh."""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mulm_jax.train.mesh import BATCH, DATA, FSDP, REPLICATED, param_specs, shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw PRNG key data (uint32); dropout keys are folded from it per step and device


def token_loss_sums(
    logits_BxTxV: jax.Array, targets_BxT: jax.Array, pad_id: Optional[int], loss_mask_BxT: Optional[jax.Array] = None
) -> dict[str, jax.Array]:
    """Summed next-token cross-entropy and correct predictions over the targets `loss_mask_BxT` marks (without one:
    the non-pad targets), and their count."""
    weight_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
    if loss_mask_BxT is not None:
        weight_BxT = loss_mask_BxT.astype(jnp.float32)
    elif pad_id is not None:
        weight_BxT = (targets_BxT != pad_id).astype(jnp.float32)
    nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    return {
        "loss_sum": (nll_BxT * weight_BxT).sum(),
        "correct_sum": (correct_BxT * weight_BxT).sum(),
        "count": weight_BxT.sum(),
    }


def model_logits(
    model: nn.Module, params: Any, batch: dict[str, jax.Array], *, rng: Optional[jax.Array], deterministic: bool
) -> tuple[jax.Array, slice]:
    """Logits, and which target positions they predict. A batch of pairs with a "source" (for an encoder-decoder)
    puts it through the encoder and the inputs through the decoder; otherwise the model's `window_inputs` say (an
    encoder-decoder model reads the first half of each window as its source and predicts the second half)."""
    rngs = {"dropout": rng} if rng is not None else {}
    kwargs = {"deterministic": deterministic, "rngs": rngs}
    if "source" in batch:
        inputs, predicted = (batch["source"], batch["inputs"]), slice(None)
        kwargs["src_valid_BxS"] = batch["source_valid"]
    else:
        inputs, predicted = model.window_inputs(batch["inputs"])
    return model.apply({"params": params}, *inputs, **kwargs), predicted


def batch_sums(
    model: nn.Module,
    params: Any,
    batch: dict[str, jax.Array],
    pad_id: Optional[int],
    rng: Optional[jax.Array] = None,
    deterministic: bool = True,
) -> dict[str, jax.Array]:
    """Token sums over a batch: of text windows, over the non-pad targets; of pairs, over those its loss_mask marks
    (a completion and its end, never the prompt or the padding)."""
    logits, predicted = model_logits(model, params, batch, rng=rng, deterministic=deterministic)
    loss_mask = batch["loss_mask"][:, predicted] if "loss_mask" in batch else None
    return token_loss_sums(logits, batch["targets"][:, predicted], pad_id, loss_mask)


def _gather(x: jax.Array, spec: PartitionSpec) -> jax.Array:
    """This device's part of a parameter split over fsdp, made whole (all-gathered along its split axis)."""
    return x if FSDP not in spec else jax.lax.all_gather(x, FSDP, axis=spec.index(FSDP), tiled=True)


def _local_sums(
    params: Any,
    rng_data: jax.Array,
    step: jax.Array,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    specs: Any,
    accum_steps: int,
    pad_id: Optional[int],
) -> tuple[Any, dict[str, jax.Array]]:
    """One device's program: the gradient of the summed loss over its rows of the batch (cut into `accum_steps`
    micro-batches whose sums are added up), and the token sums, each summed over every device.

    The gradient is taken with respect to this device's part of the parameters: shard_map's autodiff sums it over
    the devices that share a part (the transpose of a replicated input's use, and of the all-gather), so no
    collective is written here for it."""
    key = jax.random.wrap_key_data(rng_data)
    rng = jax.random.fold_in(jax.random.fold_in(key, step), jax.lax.axis_index((DATA, FSDP)))

    def accumulate(carry, inputs):
        i, mb = inputs

        def loss_sum(params):
            sums = batch_sums(
                model, jax.tree.map(_gather, params, specs), mb, pad_id, jax.random.fold_in(rng, i), deterministic=False
            )
            return sums["loss_sum"], sums

        (_, sums), grads = jax.value_and_grad(loss_sum, has_aux=True)(params)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    # the token sums differ between devices (they are summed over them at the end), as scan's carry must say
    zero_sums = {
        k: jax.lax.pcast(jnp.zeros((), jnp.float32), (DATA, FSDP), to="varying")
        for k in ("loss_sum", "correct_sum", "count")
    }
    if accum_steps == 1:  # no loop in the common case
        (grad_sum, sums), _ = accumulate((zero_grads, zero_sums), (0, batch))
    else:
        micro = jax.tree.map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)
        (grad_sum, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), (jnp.arange(accum_steps), micro))
    return grad_sum, jax.lax.psum(sums, (DATA, FSDP))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    accum_steps: int,
    pad_id: Optional[int],
    lr_schedule: optax.Schedule,
    mesh: Mesh,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch (its rows split over every device of `mesh`).

    Each device takes the gradient of the summed loss over its rows (with parameters split over fsdp gathered
    whole first); the sums over all devices give the gradient of the mean loss over every non-pad target of the
    global batch, whatever the mesh or accumulation. The optimizer then updates each device's part of the state.
    """
    specs = param_specs(state.params, mesh)
    local = functools.partial(_local_sums, model=model, specs=specs, accum_steps=accum_steps, pad_id=pad_id)
    grad_sum, sums = jax.shard_map(
        local, mesh=mesh, in_specs=(specs, REPLICATED, REPLICATED, BATCH), out_specs=(specs, REPLICATED)
    )(state.params, state.rng, state.step, batch)
    count = jnp.maximum(sums["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grad_sum)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the mesh the optimizer may split its work over
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": sums["loss_sum"] / count,
        "accuracy": sums["correct_sum"] / count,
        "grad_norm": optax.tree.norm(grads),
        "lr": lr_schedule(state.step),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(
    params: Any, batch: dict[str, jax.Array], *, model: nn.Module, pad_id: Optional[int], mesh: Mesh
) -> dict[str, jax.Array]:
    """Token sums over an evaluation batch (its rows split over every device of `mesh`)."""
    specs = param_specs(params, mesh)

    def local(params, batch):
        return jax.lax.psum(batch_sums(model, jax.tree.map(_gather, params, specs), batch, pad_id), (DATA, FSDP))

    return jax.shard_map(local, mesh=mesh, in_specs=(specs, BATCH), out_specs=REPLICATED)(params, batch)


def state_placement(state: TrainState, mesh: Mesh) -> TrainState:
    """Where each array of a train state (arrays or ShapeDtypeStructs) lives on `mesh`: the step and key on every
    device, parameters and optimizer state by mesh.param_spec."""
    return TrainState(
        step=NamedSharding(mesh, REPLICATED),
        rng=NamedSharding(mesh, REPLICATED),
        params=shardings(param_specs(state.params, mesh), mesh),
        opt_state=shardings(param_specs(state.opt_state, mesh), mesh),
    )


def mesh_steps(
    model: nn.Module,
    tx: optax.GradientTransformation,
    accum_steps: int,
    pad_id: Optional[int],
    lr_schedule: optax.Schedule,
    mesh: Mesh,
    placement: TrainState,
) -> tuple[Any, Any]:
    """(train_step, eval_step) jitted over `mesh`, the state kept where `placement` puts it (and donated), the
    metrics and sums on every device; each array of the batch, whatever its keys, split by rows over the mesh."""
    everywhere = NamedSharding(mesh, REPLICATED)
    batch = NamedSharding(mesh, BATCH)  # a prefix of the batch dict: every array in it
    train = jax.jit(
        functools.partial(
            train_step, model=model, tx=tx, accum_steps=accum_steps, pad_id=pad_id, lr_schedule=lr_schedule, mesh=mesh
        ),
        in_shardings=(placement, batch),
        out_shardings=(placement, everywhere),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        functools.partial(eval_step, model=model, pad_id=pad_id, mesh=mesh),
        in_shardings=(placement.params, batch),
        out_shardings=everywhere,
    )
    return train, evaluate
