"""How a Hugging Face tensor holds our parameters: one table per architecture, read both ways (import, export)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mulm_jax.errors import MulmError


class InteropError(MulmError):
    """A Hugging Face folder or a run that cannot be converted; the message names the file, setting or tensor."""


# The ablation switches (docs/models.md) as every Hugging Face architecture has them: residual connections, scores
# scaled by 1/sqrt(head width), an MLP in each block. A model with one of them off has no counterpart there.
STANDARD_BLOCK = {"residual": True, "attention_scale": "sqrt", "mlp": "ffn"}


@dataclass(frozen=True)
class Part:
    """One parameter of ours: its path in the tree ("decoder/layer_0/ffn/up/kernel") and shape. Kernels: the
    first `in_ndim` axes are the input, the rest the output; in_ndim 0: a vector (bias, norm scale, table)."""

    path: str
    shape: tuple[int, ...]
    in_ndim: int = 0

    @property
    def out_size(self) -> int:
        return math.prod(self.shape[self.in_ndim :])


@dataclass(frozen=True)
class Tensor:
    """One Hugging Face tensor, holding `parts` (ours) concatenated along its output axis.

    layout: "linear" is torch's nn.Linear weight [out, in]; "conv1d" is GPT-2's Conv1D weight [in, out];
    "vector" is a bias or a norm weight (1-D there); "table" an embedding table, the same shape in both.
    """

    name: str
    parts: tuple[Part, ...]
    layout: Literal["linear", "conv1d", "vector", "table"] = "vector"

    def to_ours(self, w: np.ndarray) -> list[np.ndarray]:
        want = self.hf_shape()
        if tuple(w.shape) != want:
            raise InteropError(f"tensor {self.name} has shape {tuple(w.shape)}; the config implies {want}")
        if self.layout == "table":
            return [w]
        cuts = np.cumsum([p.out_size for p in self.parts])[:-1]
        if self.layout == "vector":
            return [piece.reshape(p.shape) for p, piece in zip(self.parts, np.split(w.reshape(-1), cuts))]
        pieces = np.split(w, cuts, axis=0 if self.layout == "linear" else 1)
        if self.layout == "linear":
            pieces = [piece.T for piece in pieces]
        return [np.ascontiguousarray(piece.reshape(p.shape)) for p, piece in zip(self.parts, pieces)]

    def to_hf(self, arrays: list[np.ndarray]) -> np.ndarray:
        if self.layout == "table":
            return arrays[0]
        if self.layout == "vector":
            return np.concatenate([a.reshape(-1) for a in arrays])
        mats = [a.reshape(math.prod(p.shape[: p.in_ndim]), -1) for p, a in zip(self.parts, arrays)]
        if self.layout == "linear":
            return np.ascontiguousarray(np.concatenate([m.T for m in mats], axis=0))
        return np.ascontiguousarray(np.concatenate(mats, axis=1))

    def hf_shape(self) -> tuple[int, ...]:
        if self.layout == "table":
            return self.parts[0].shape
        if self.layout == "vector":
            return (sum(p.out_size for p in self.parts),)
        n_in = math.prod(self.parts[0].shape[: self.parts[0].in_ndim])
        n_out = sum(p.out_size for p in self.parts)
        return (n_out, n_in) if self.layout == "linear" else (n_in, n_out)


def one(name: str, path: str, shape: tuple[int, ...], layout: str = "vector", in_ndim: int = 0) -> Tensor:
    return Tensor(name, (Part(path, tuple(shape), in_ndim),), layout)
