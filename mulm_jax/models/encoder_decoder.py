"""Encoder-decoder model (the 2017 Transformer and its variants): (source ids, target ids) -> target logits."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mulm_jax.config import ModelConfig
from mulm_jax.models.decoder import default_positions, embedder_for
from mulm_jax.models.masks import cached_key_positions, self_attention_mask_and_bias
from mulm_jax.nn.attention import KVCache, attention_mask
from mulm_jax.nn.blocks import BlockStack


class EncoderDecoderLM(nn.Module):
    """Bidirectional encoder over the source, causal decoder with cross-attention over the encoder output.

    One token embedding is shared by source, target and (when tied) the output head, as in the paper.
    `src_valid_BxS` marks real source tokens (False: padding), hidden from both encoder and cross-attention.
    """

    cfg: ModelConfig
    remat: bool = False

    def setup(self) -> None:
        cfg = self.cfg
        self.embedder = embedder_for(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = BlockStack(cfg, cfg.encoder_layers, remat=self.remat, name="encoder")
        self.decoder = BlockStack(cfg, cfg.decoder_layers, cross_attention=True, remat=self.remat, name="decoder")

    def __call__(self, src_BxS: jax.Array, tgt_BxT: jax.Array, *, src_valid_BxS: Optional[jax.Array] = None,
                 deterministic: bool = True, return_weights: bool = False) -> jax.Array:
        memory_BxSxD = self.encode(src_BxS, src_valid_BxS=src_valid_BxS, deterministic=deterministic,
                                   return_weights=return_weights)
        return self.decode(tgt_BxT, memory_BxSxD, src_valid_BxS=src_valid_BxS, deterministic=deterministic,
                           return_weights=return_weights)

    def encode(self, src_BxS: jax.Array, *, src_valid_BxS: Optional[jax.Array] = None,
               deterministic: bool = True, return_weights: bool = False) -> jax.Array:
        """Encoder output [B, S, D]."""
        pos_BxS = default_positions(src_BxS)
        mask, bias = self_attention_mask_and_bias(self.cfg, pos_BxS, pos_BxS, causal=False,
                                                  k_valid_BxS=src_valid_BxS)
        x_BxSxD = self.dropout(self.embedder.embed(src_BxS, pos_BxS), deterministic=deterministic)
        memory_BxSxD, _, _ = self.encoder(x_BxSxD, mask=mask, bias=bias, q_pos_BxT=pos_BxS, k_pos_BxS=pos_BxS,
                                       deterministic=deterministic, return_weights=return_weights)
        return memory_BxSxD

    def decode(
        self,
        tgt_BxT: jax.Array,
        memory_BxSxD: Optional[jax.Array],
        *,
        src_valid_BxS: Optional[jax.Array] = None,
        pos_BxT: Optional[jax.Array] = None,
        caches: Optional[tuple[KVCache, ...]] = None,
        cross_caches: Optional[tuple[KVCache, ...]] = None,
        deterministic: bool = True,
        return_weights: bool = False,
    ) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...], tuple[KVCache, ...]]:
        """Target logits [B, T, V] given the encoder output.

        With `caches` (self-attention, one per layer) it returns (logits, updated caches, cross caches): the
        cross caches hold the encoder output projected to each layer's keys and values, so that later steps
        pass them as `cross_caches` with `memory_BxSxD=None` and never project it again.
        """
        q_pos_BxT = default_positions(tgt_BxT) if pos_BxT is None else pos_BxT
        B = tgt_BxT.shape[0]
        k_pos_BxK, k_valid_BxK = q_pos_BxT, None
        if caches is not None:
            k_pos_BxK, k_valid_BxK = cached_key_positions(q_pos_BxT, caches[0].max_len)
        mask, bias = self_attention_mask_and_bias(self.cfg, q_pos_BxT, k_pos_BxK, causal=True,
                                                  k_valid_BxS=k_valid_BxK)
        S = memory_BxSxD.shape[1] if cross_caches is None else cross_caches[0].max_len
        src_pos_BxS = default_positions(jnp.zeros((B, S), jnp.int32))
        memory_mask = attention_mask(q_pos_BxT, src_pos_BxS, causal=False, k_valid_BxS=src_valid_BxS)
        x_BxTxD = self.dropout(self.embedder.embed(tgt_BxT, q_pos_BxT), deterministic=deterministic)
        hidden_BxTxD, new_caches, new_cross_caches = self.decoder(
            x_BxTxD, mask=mask, bias=bias, q_pos_BxT=q_pos_BxT, k_pos_BxS=k_pos_BxK, memory_BxSxD=memory_BxSxD,
            memory_mask=memory_mask, caches=caches, cross_caches=cross_caches, deterministic=deterministic,
            return_weights=return_weights)
        logits_BxTxV = self.embedder.logits(hidden_BxTxD)
        return logits_BxTxV if caches is None else (logits_BxTxV, new_caches, new_cross_caches)
