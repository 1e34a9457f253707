"""Models assembled from mulm_jax.nn parts by config: `build_model(model_config)` returns a Flax linen module."""

from __future__ import annotations

import flax.linen as nn

from mulm_jax.config import ModelConfig
from mulm_jax.models.decoder import DecoderLM
from mulm_jax.models.encoder_decoder import EncoderDecoderLM


def build_model(cfg: ModelConfig, remat: bool = False) -> nn.Module:
    """DecoderLM for architecture=decoder, EncoderDecoderLM for encoder_decoder; the config is validated first.

    remat: recompute block activations in the backward pass (less memory, more compute) for training.
    """
    cfg.validate()
    if cfg.architecture == "encoder_decoder":
        return EncoderDecoderLM(cfg, remat=remat)
    return DecoderLM(cfg, remat=remat)


__all__ = ["build_model", "DecoderLM", "EncoderDecoderLM"]
