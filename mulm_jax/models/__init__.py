"""Models assembled from mulm_jax.nn parts by config: `build_model(model_config)` returns a Flax linen module."""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Sequence

import flax.linen as nn
import jax
import numpy as np

from mulm_jax.config import ModelConfig
from mulm_jax.models.decoder import DecoderLM
from mulm_jax.models.encoder_decoder import EncoderDecoderLM
from mulm_jax.nn.attention import KVCache

ARCHITECTURES: dict[str, type[nn.Module]] = {"decoder": DecoderLM, "encoder_decoder": EncoderDecoderLM}


class LanguageModel(Protocol):
    """What training, serving, embeddings and `info` use of a model, so that none of them asks which architecture
    it is: DecoderLM and EncoderDecoderLM each implement it (the last three through `model.apply(..., method=)`)."""

    cfg: ModelConfig

    def window_inputs(self, inputs_BxT: jax.Array) -> tuple[tuple[jax.Array, ...], slice]: ...

    def cache_window(self) -> Optional[int]: ...

    def layers_line(self) -> str: ...

    def prompt_arrays(
        self, ids: Sequence[int], pad: Callable[[Sequence[int]], np.ndarray]
    ) -> tuple[np.ndarray, ...]: ...

    def empty_source(self, batch: int) -> Any: ...

    def prefill(
        self, ids_1xL: jax.Array, length: jax.Array, *source: jax.Array, caches: tuple[KVCache, ...]
    ) -> tuple[jax.Array, tuple[KVCache, ...], Any]: ...

    def decode_step(
        self, ids_Bx1: jax.Array, pos_Bx1: jax.Array, caches: tuple[KVCache, ...], source: Any
    ) -> tuple[jax.Array, tuple[KVCache, ...]]: ...

    def features(self, ids_BxT: jax.Array, valid_BxT: jax.Array) -> jax.Array: ...


def build_model(cfg: ModelConfig, remat: bool = False) -> nn.Module:
    """DecoderLM for architecture=decoder, EncoderDecoderLM for encoder_decoder; the config is validated first.

    remat: recompute block activations in the backward pass (less memory, more compute) for training.
    """
    cfg.validate()
    return ARCHITECTURES[cfg.architecture](cfg, remat=remat)


__all__ = ["ARCHITECTURES", "build_model", "DecoderLM", "EncoderDecoderLM", "LanguageModel"]
