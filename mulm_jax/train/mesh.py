"""The training mesh: every device of every process on two named axes (`data`, `fsdp`), and where each array of a
run lives on it (batch rows split over all devices; parameters and optimizer state replicated or split over fsdp)."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mulm_jax.config import MeshConfig
from mulm_jax.errors import MulmError
from mulm_jax.platform import on_cpu, replicas_fit

DATA, FSDP = "data", "fsdp"
BATCH = PartitionSpec((DATA, FSDP))  # a batch's rows, split over every device of the mesh
REPLICATED = PartitionSpec()


class MeshError(MulmError):
    """A mesh that the devices of this run cannot form."""


def make_mesh(cfg: MeshConfig, replica_bytes: int = 0) -> Mesh:
    """The (data, fsdp) mesh over every device of every process (train.mesh; data 0: all that fsdp leaves).

    replica_bytes: one whole copy of the training state. The CPU's devices share the host's memory, so where the
    default mesh (data 0, fsdp 1) would copy a state that large to every one of them past half of it, the state
    is split over fsdp instead (platform.replicas_fit)."""
    devices = jax.device_count()
    fsdp = cfg.fsdp
    if (cfg.data, fsdp) == (0, 1) and devices > 1 and on_cpu() and not replicas_fit(replica_bytes, devices):
        fsdp = devices
    data = cfg.data or devices // fsdp
    if data * fsdp != devices:
        raise MeshError(
            f"train.mesh data={cfg.data} x fsdp={fsdp} does not cover the {devices} device(s) of this "
            f"run: data x fsdp must equal {devices} (data 0 takes what fsdp leaves)"
        )
    return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto))


def param_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Where an array of parameters (or of optimizer state shaped like them) lives: split over fsdp along its
    largest axis that fsdp divides, else whole on every device (scalars, small vectors that do not divide)."""
    axes = [i for i, n in enumerate(shape) if n % fsdp == 0 and n >= fsdp]
    if fsdp == 1 or not axes:
        return REPLICATED
    split = max(axes, key=lambda i: shape[i])
    return PartitionSpec(*(FSDP if i == split else None for i in range(len(shape))))


def param_specs(tree: Any, mesh: Mesh) -> Any:
    """param_spec of every array (or ShapeDtypeStruct) in `tree`, for this mesh's fsdp size."""
    return jax.tree.map(lambda x: param_spec(tuple(x.shape), mesh.shape[FSDP]), tree)


def shardings(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def shaped(tree: Any, placement: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays placed as `placement` says (a sharding per leaf): what a step is
    compiled for before any array exists."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, placement)


def on_mesh(tree: Any, placement: Any) -> Any:
    """Host arrays (the same on every process) as global arrays placed as `placement` says; each process
    copies only its own devices' parts."""

    def put(x: Any, sharding: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, placement)


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch as the global batch array, its rows split over every device."""
    sharding = NamedSharding(mesh, BATCH)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(tree: Any) -> Any:
    """Whole numpy copies of a tree of global arrays, on every process (gathered where another process holds
    parts)."""
    if all(x.is_fully_addressable for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def rows_per_device(global_batch_size: int, accum_steps: int) -> int:
    """Rows of a batch each device takes (the global batch split evenly over every device and the accumulation
    steps, or a MeshError)."""
    devices = jax.device_count()
    if global_batch_size % (devices * accum_steps):
        raise MeshError(
            f"train.batch_size={global_batch_size} does not split evenly over {jax.process_count()} "
            f"process(es) x {jax.local_device_count()} device(s) x {accum_steps} accumulation step(s)"
        )
    return global_batch_size // devices


def bytes_per_device(tree: Any) -> int:
    """The bytes one device holds of a tree of placed ShapeDtypeStructs or arrays (its share of each split)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total
