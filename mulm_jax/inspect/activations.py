"""Named activations of one traced sequence (what `Tracer.run_with_cache` returns) and the edits that replace them
during a forward pass (what interventions are made of), laid out by each name's shape letters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional

import numpy as np


@dataclass(frozen=True)
class ActivationCache(Mapping[str, np.ndarray]):
    """name -> float32 array of one sequence, unpadded, with its shape letters (`letters[name]`, e.g. "HxTxT":
    see nn.hooks.vocabulary and docs/inspect.md). `ids_T` / `pieces` are the (decoder's) tokens; an
    encoder-decoder model's source is in `source_ids_S` / `source_pieces`."""

    arrays: dict[str, np.ndarray]
    letters: dict[str, str]
    ids_T: np.ndarray
    pieces: list[str]
    source_ids_S: Optional[np.ndarray] = None
    source_pieces: Optional[list[str]] = None

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"{name!r} was not cached: this cache holds {', '.join(self.arrays)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


@dataclass(frozen=True)
class Edit:
    """An intervention on one named activation: x -> x * scale + shift, with `scale` and `shift` broadcastable to
    the activation's shape for one sequence (its letters; an axis of T or S positions may have size 1 or the
    sequence's length). Zero-ablation is scale 0; mean-ablation scale 0 and shift the mean; patching scale 0 and
    shift the other run's value, at the positions patched (scale 1 and shift 0 elsewhere)."""

    scale: np.ndarray | float = 1.0
    shift: np.ndarray | float = 0.0


@dataclass(frozen=True)
class Layout:
    """How one traced batch is padded: T decoder tokens in a bucket of L, S source tokens in a bucket of LS."""

    T: int
    L: int
    S: int = 0
    LS: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # D, H, K, Dh, F, V

    def _axes(self, letters: str) -> list[str]:
        return letters.split("x")

    def unpad(self, x_NxAxes: np.ndarray, letters: str) -> np.ndarray:
        """A batch of padded activations [N, ...] cut to the sequence's own T / S positions."""
        index = (slice(None),) + tuple(
            slice(0, self.T) if a == "T" else slice(0, self.S) if a == "S" else slice(None) for a in self._axes(letters)
        )
        return x_NxAxes[index]

    def pad_edit(self, name: str, letters: str, values: np.ndarray | float, fill: float, batch: int) -> np.ndarray:
        """An edit's scale or shift as float32 [batch or 1, ...] padded to the bucket (with `fill`: 1 for a scale,
        0 for a shift), checked against the activation's shape. `values` may carry a leading batch axis of
        `batch` rows (one edit per traced row) beyond the activation's own axes."""
        axes = self._axes(letters)
        a = np.asarray(values, np.float32)
        if a.ndim > len(axes) + 1:
            raise ValueError(
                f"edit of {name!r}: an array of shape {a.shape} has more axes than {letters} (and a batch axis)"
            )
        if a.ndim <= len(axes):
            a = a.reshape((1,) * (len(axes) - a.ndim) + a.shape)[None]
        full = {"T": self.T, "S": self.S, "1": 1, **self.sizes}
        widths = [(0, 0)]
        for axis, (letter, size) in enumerate(zip(axes, a.shape[1:])):
            expected = full[letter]
            if size not in (1, expected):
                raise ValueError(
                    f"edit of {name!r} ({letters}): axis {axis} has size {size}, expected 1 or {expected} ({letter})"
                )
            pad_to = {"T": self.L, "S": self.LS}.get(letter)
            widths.append((0, pad_to - size) if pad_to is not None and size > 1 else (0, 0))
        if a.shape[0] not in (1, batch):
            raise ValueError(f"edit of {name!r}: {a.shape[0]} rows of edits for a batch of {batch}")
        return np.pad(a, widths, constant_values=fill)
