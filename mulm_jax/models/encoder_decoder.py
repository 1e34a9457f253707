"""Encoder-decoder model (the 2017 Transformer and its variants): (source ids, target ids) -> target logits."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.config import ModelConfig
from mulm_jax.models.decoder import default_positions, embedder_for
from mulm_jax.models.masks import cached_key_positions, self_attention_inputs
from mulm_jax.nn.attention import KVCache, attention_mask
from mulm_jax.nn.blocks import BlockStack
from mulm_jax.nn.hooks import hook


@flax.struct.dataclass
class SourceCache:
    """What generation keeps of each sequence's source: its keys / values in every decoder layer's
    cross-attention ([B, K, S_max, Dh] each) and which of its positions are real ([B, S_max])."""

    cross_caches: tuple[KVCache, ...]
    src_valid_BxS: jax.Array


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

    def __call__(
        self,
        src_BxS: jax.Array,
        tgt_BxT: jax.Array,
        *,
        src_valid_BxS: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> jax.Array:
        memory_BxSxD = self.encode(src_BxS, src_valid_BxS=src_valid_BxS, deterministic=deterministic)
        return self.decode(tgt_BxT, memory_BxSxD, src_valid_BxS=src_valid_BxS, deterministic=deterministic)

    def encode(
        self, src_BxS: jax.Array, *, src_valid_BxS: Optional[jax.Array] = None, deterministic: bool = True
    ) -> jax.Array:
        """Encoder output [B, S, D]."""
        pos_BxS = default_positions(src_BxS)
        mask, bias, pattern = self_attention_inputs(
            self.cfg,
            pos_BxS,
            pos_BxS,
            causal=False,
            k_valid_BxS=src_valid_BxS,
            whole_pass=deterministic or self.cfg.dropout == 0.0,
            contiguous=True,
        )
        x_BxSxD = self.dropout(self.embedder.embed(src_BxS, pos_BxS, "encoder."), deterministic=deterministic)
        memory_BxSxD, _, _ = self.encoder(
            x_BxSxD,
            mask=mask,
            bias=bias,
            pattern=pattern,
            q_pos_BxT=pos_BxS,
            k_pos_BxS=pos_BxS,
            deterministic=deterministic,
        )
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
        mask, bias, pattern = self_attention_inputs(
            self.cfg,
            q_pos_BxT,
            k_pos_BxK,
            causal=True,
            k_valid_BxS=k_valid_BxK,
            whole_pass=caches is None and (deterministic or self.cfg.dropout == 0.0),
            contiguous=caches is None and pos_BxT is None,
        )
        S = memory_BxSxD.shape[1] if cross_caches is None else cross_caches[0].max_len
        src_pos_BxS = default_positions(jnp.zeros((B, S), jnp.int32))
        memory_mask = attention_mask(q_pos_BxT, src_pos_BxS, causal=False, k_valid_BxS=src_valid_BxS)
        x_BxTxD = self.dropout(self.embedder.embed(tgt_BxT, q_pos_BxT), deterministic=deterministic)
        hidden_BxTxD, new_caches, new_cross_caches = self.decoder(
            x_BxTxD,
            mask=mask,
            bias=bias,
            pattern=pattern,
            q_pos_BxT=q_pos_BxT,
            k_pos_BxS=k_pos_BxK,
            memory_BxSxD=memory_BxSxD,
            memory_mask=memory_mask,
            caches=caches,
            cross_caches=cross_caches,
            deterministic=deterministic,
        )
        logits_BxTxV = hook(self, "logits", self.embedder.logits(hidden_BxTxD))
        return logits_BxTxV if caches is None else (logits_BxTxV, new_caches, new_cross_caches)

    # The interface both model classes implement (see models.LanguageModel).
    @nn.nowrap
    def window_inputs(self, inputs_BxT: jax.Array) -> tuple[tuple[jax.Array, ...], slice]:
        """A training window as the model's inputs, and the target positions the logits predict: the first half
        of each window is the source, the logits predict the second half."""
        half = inputs_BxT.shape[1] // 2
        return (inputs_BxT[:, :half], inputs_BxT[:, half:]), slice(half, None)

    @nn.nowrap
    def cache_window(self) -> None:
        """The decoder's self-attention cache keeps every position, whatever the attention pattern."""
        return None

    @nn.nowrap
    def layers_line(self) -> str:
        return f"{self.cfg.encoder_layers}+{self.cfg.decoder_layers} layers (encoder+decoder)"

    @nn.nowrap
    def prompt_arrays(self, ids: Sequence[int], pad: Callable[[Sequence[int]], np.ndarray]) -> tuple[np.ndarray, ...]:
        """`prefill`'s arguments for a generation prompt: the last token starts the decoder ([1, 1], length 1);
        the tokens before it are the source, padded by `pad` ([1, S]), and its length."""
        source = list(ids[:-1])
        return np.asarray([ids[-1:]], np.int32), np.int32(1), pad(source), np.int32(len(source))

    @nn.nowrap
    def empty_source(self, batch: int) -> SourceCache:
        """What `prefill` keeps of a prompt beside the caches, for `batch` sequences: room for a source of up to
        the context."""
        cfg, S = self.cfg, self.cfg.max_seq_len
        cross = tuple(
            KVCache.zeros(batch, S, cfg.kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype)) for _ in range(cfg.decoder_layers)
        )
        return SourceCache(cross_caches=cross, src_valid_BxS=jnp.zeros((batch, S), bool))

    def prefill(
        self,
        ids_1xL: jax.Array,
        length: jax.Array,
        src_1xS: jax.Array,
        src_length: jax.Array,
        *,
        caches: tuple[KVCache, ...],
    ) -> tuple[jax.Array, tuple[KVCache, ...], SourceCache]:
        """The source (`src_length` tokens, then padding) encoded, and the decoder's unpadded start (`length` is
        its width) run into fresh caches: logits [1, L, V], the caches, and the source's cross caches."""
        src_valid_1xS = jnp.arange(src_1xS.shape[1])[None] < src_length
        memory_1xSxD = self.encode(src_1xS, src_valid_BxS=src_valid_1xS)
        logits_1xLxV, new_caches, cross = self.decode(
            ids_1xL, memory_1xSxD, src_valid_BxS=src_valid_1xS, pos_BxT=default_positions(ids_1xL), caches=caches
        )
        valid_1xSmax = jnp.arange(self.cfg.max_seq_len)[None] < src_length
        return logits_1xLxV, new_caches, SourceCache(cross_caches=cross, src_valid_BxS=valid_1xSmax)

    def decode_step(
        self, ids_Bx1: jax.Array, pos_Bx1: jax.Array, caches: tuple[KVCache, ...], source: SourceCache
    ) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """One new token per sequence at `pos_Bx1`, reading each one's source: logits [B, 1, V] and the updated
        caches."""
        logits_Bx1xV, new_caches, _ = self.decode(
            ids_Bx1,
            None,
            src_valid_BxS=source.src_valid_BxS,
            pos_BxT=pos_Bx1,
            caches=caches,
            cross_caches=source.cross_caches,
        )
        return logits_Bx1xV, new_caches

    def features(self, ids_BxT: jax.Array, valid_BxT: jax.Array) -> jax.Array:
        """The hidden states [B, T, D] text embeddings pool: the encoder output."""
        return self.encode(ids_BxT, src_valid_BxS=valid_BxT)
