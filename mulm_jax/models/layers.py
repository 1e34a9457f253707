"""One conversion between a scanned stack's parameters (`layers`, stacked [N, ...]) and per-layer ones (`layer_i`)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.config import Config
from mulm_jax.nn.blocks import STACKED

_LAYER = re.compile(r"layer_(\d+)")


def per_layer_config(config: Config) -> Config:
    """`config` as a model is run (generation, inspection, export): per layer, whichever layout it trains in."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=False))


def per_layer(tree: Any) -> Any:
    """`tree` with every `layers` subtree (each leaf [N, ...]) turned into `layer_0` ... `layer_{N-1}` subtrees.

    `tree`: a parameter tree, or any pytree holding parameter-shaped dicts (an optax state, a TrainState)."""
    return _map_dicts(tree, _unstack)


def stacked(tree: Any) -> Any:
    """The inverse of per_layer: every run of `layer_0` ... `layer_{N-1}` subtrees stacked into one `layers`."""
    return _map_dicts(tree, _stack)


def _map_dicts(tree: Any, convert: Callable[[Mapping], dict]) -> Any:
    """`convert` applied to each outermost dict of `tree`, whatever pytree containers hold it."""
    is_dict = lambda x: isinstance(x, Mapping)  # noqa: E731
    return jax.tree.map(lambda x: convert(x) if is_dict(x) else x, tree, is_leaf=is_dict)


def _unstack(d: Mapping) -> dict:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key != STACKED or not isinstance(value, Mapping):
            out[key] = _map_dicts(value, _unstack)
            continue
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(value)}
        if len(sizes) != 1:
            raise ValueError(
                f"the leaves of a stacked '{STACKED}' subtree disagree on the layer count: {sorted(sizes)}"
            )
        for i in range(sizes.pop()):
            out[f"layer_{i}"] = jax.tree.map(lambda leaf: leaf[i], value)
    return out


def _stack(d: Mapping) -> dict:
    layers = sorted(int(m.group(1)) for key in d if (m := _LAYER.fullmatch(key)))
    if layers and layers != list(range(len(layers))):
        raise ValueError(f"per-layer subtrees are not layer_0 ... layer_{len(layers) - 1}: got layers {layers}")
    out = {key: _map_dicts(value, _stack) for key, value in d.items() if not _LAYER.fullmatch(key)}
    if layers:
        out[STACKED] = jax.tree.map(_stack_leaves, *(d[f"layer_{i}"] for i in layers))
    return out


def _stack_leaves(*leaves: Any) -> Any:
    """Numpy leaves stay numpy (on the host); any other array is stacked by jax."""
    return np.stack(leaves) if all(isinstance(x, np.ndarray) for x in leaves) else jnp.stack(leaves)
