"""Muon (optax.contrib's) with the Newton-Schulz iterations of all same-shaped matrices run as one batch, and that
batch split over the mesh's data devices.

optax.contrib.muon orthogonalises each weight matrix on its own: for a small model that is hundreds of tiny
matmuls one after another (five iterations of three products per matrix), and under data parallelism every
device repeats all of them. Here the hidden layers' matrices are stacked by shape ([n, rows, cols], each wide
side last), iterated together, and where a mesh with a `data` axis is current (the train step sets it), each
data device iterates its share of the stack. The arithmetic is optax's, in the same order: Nesterov momentum
with bias correction and the Frobenius normalisation from optax.contrib.scale_by_muon (asked for no iterations),
then the same quintic iteration, width scaling sqrt(max(1, fan_out / fan_in)), weight decay and the learning
rate. The state has the same structure as optax.contrib.muon's, so runs saved with either resume with the other.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from mulm_jax.train.mesh import DATA

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax.contrib.muon's default quintic
NS_STEPS = 5


def _as_matrices(x: jax.Array, dims: MuonDimensionNumbers) -> jax.Array:
    """[batch, fan_in, fan_out] of a kernel whose axes are (batch axes, input axes, output axes) in order."""
    inputs, outputs = tuple(dims.reduction_axis), tuple(dims.output_axis)
    batch = math.prod(x.shape[: inputs[0]])
    return x.reshape(batch, math.prod(x.shape[i] for i in inputs), math.prod(x.shape[o] for o in outputs))


def _split_over_data(stack: jax.Array) -> jax.Array:
    """The stack's matrices split over the current mesh's data devices, where there is such a mesh and the count
    divides; else as it is."""
    devices = jax.sharding.get_abstract_mesh().shape.get(DATA, 1)  # no mesh: an empty shape
    if devices > 1 and stack.shape[0] % devices == 0:
        return jax.lax.with_sharding_constraint(stack, PartitionSpec(DATA))
    return stack


def newton_schulz(stack: jax.Array, coeffs: tuple[float, float, float] = NS_COEFFS, steps: int = NS_STEPS) -> jax.Array:
    """The quintic Newton-Schulz iteration on a stack of Frobenius-normalised matrices [n, r, c] with r <= c."""
    a, b, c = coeffs
    x = stack
    for _ in range(steps):
        gram = jnp.einsum("nij,nkj->nik", x, x)
        poly = b * gram + c * jnp.einsum("nij,njk->nik", gram, gram)
        x = a * x + jnp.einsum("nij,njk->nik", poly, x)
    return x


def orthogonalise_stacked(dims_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
    """Newton-Schulz on every matrix of the updates (dims_fn: their MuonDimensionNumbers, None elsewhere), each
    shape's matrices stacked and iterated together, then optax's width scaling. Stateless."""

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        leaves, treedef = jax.tree.flatten(updates)
        dims = jax.tree.leaves(dims_fn(updates), is_leaf=lambda d: isinstance(d, MuonDimensionNumbers))
        matrices = [_as_matrices(x, d) for x, d in zip(leaves, dims)]
        wide = [m if m.shape[1] <= m.shape[2] else m.transpose(0, 2, 1) for m in matrices]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, m in enumerate(wide):
            groups.setdefault(m.shape[1:], []).append(i)
        done: dict[int, jax.Array] = {}
        for members in groups.values():
            result = newton_schulz(_split_over_data(jnp.concatenate([wide[i] for i in members])))
            ends = list(itertools.accumulate(wide[i].shape[0] for i in members))[:-1]
            done.update(zip(members, jnp.split(result, ends)))
        out = []
        for i, (x, m) in enumerate(zip(leaves, matrices)):
            w = done[i] if done[i].shape == m.shape else done[i].transpose(0, 2, 1)
            fan_in, fan_out = m.shape[1], m.shape[2]
            out.append((math.sqrt(max(1.0, fan_out / fan_in)) * w).reshape(x.shape))
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def stacked_muon(
    learning_rate: optax.ScalarOrSchedule,
    dims_fn: Callable[[Any], Any],
    *,
    beta: float,
    weight_decay: float,
    adam_learning_rate: optax.ScalarOrSchedule,
    adam_b1: float,
    adam_b2: float,
) -> optax.GradientTransformation:
    """optax.contrib.muon(learning_rate, beta=, weight_decay=, adam_b1=, adam_b2=, adam_learning_rate=,
    muon_weight_dimension_numbers=dims_fn) with its defaults otherwise, the orthogonalisation stacked by shape."""

    def labels(params: Any) -> Any:
        return jax.tree.map(
            lambda d, x: "adam" if d is None else "muon",
            dims_fn(params),
            params,
            is_leaf=lambda d: d is None or isinstance(d, MuonDimensionNumbers),
        )

    muon_part = optax.chain(
        scale_by_muon(ns_steps=0, beta=beta, weight_dimension_numbers=dims_fn),  # momentum, normalised: no iteration
        orthogonalise_stacked(dims_fn),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
    return optax.partition(
        {
            "muon": muon_part,
            "adam": optax.adamw(adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=1e-8, weight_decay=0.0, nesterov=True),
        },
        labels,
    )
