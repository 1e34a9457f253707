"""Decoder-only language model (GPT-2 style, Llama style, ... by config): ids [B, T] -> logits [B, T, V]."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mulm_jax.config import ModelConfig
from mulm_jax.models.masks import cached_key_positions, self_attention_inputs
from mulm_jax.nn.attention import KVCache
from mulm_jax.nn.blocks import BlockStack
from mulm_jax.nn.embedding import Embedder
from mulm_jax.nn.hooks import hook


def embedder_for(cfg: ModelConfig) -> Embedder:
    return Embedder(
        cfg.vocab_size,
        cfg.d_model,
        cfg.max_seq_len,
        cfg.positional,
        cfg.tie_embeddings,
        scale=cfg.scale_embeddings,
        softcap=cfg.logit_softcap,
        zero_head=cfg.zero_init_outputs,
        dtype=jnp.dtype(cfg.dtype),
        name="embedder",
    )


def default_positions(ids_BxT: jax.Array) -> jax.Array:
    B, T = ids_BxT.shape
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


class DecoderLM(nn.Module):
    """Causal LM. Without a cache: positions default to 0..T-1 and `valid_BxT` marks padding.

    With `caches` (one KVCache per layer, each [B, K, S_max, Dh]), the T new tokens sit at positions
    `pos_BxT` (per sequence, consecutive from the sequence's cached length), attend over the cache's
    earlier positions and each other, and the updated caches are returned: prefill is T = prompt bucket
    (padding marked in `valid_BxT`), decode is T = 1, same code.
    """

    cfg: ModelConfig
    remat: bool = False

    def setup(self) -> None:
        self.embedder = embedder_for(self.cfg)
        self.dropout = nn.Dropout(self.cfg.dropout)
        self.stack = BlockStack(self.cfg, self.cfg.num_layers, remat=self.remat, name="decoder")

    def __call__(
        self,
        ids_BxT: jax.Array,
        *,
        pos_BxT: Optional[jax.Array] = None,
        valid_BxT: Optional[jax.Array] = None,
        caches: Optional[tuple[KVCache, ...]] = None,
        deterministic: bool = True,
    ) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
        hidden_BxTxD, new_caches = self.hidden(
            ids_BxT, pos_BxT=pos_BxT, valid_BxT=valid_BxT, caches=caches, deterministic=deterministic
        )
        logits_BxTxV = hook(self, "logits", self.embedder.logits(hidden_BxTxD))
        return logits_BxTxV if caches is None else (logits_BxTxV, new_caches)

    # The interface both model classes implement (see models.LanguageModel).
    @nn.nowrap
    def window_inputs(self, inputs_BxT: jax.Array) -> tuple[tuple[jax.Array, ...], slice]:
        """A training window as the model's inputs, and the target positions the logits predict: all of them."""
        return (inputs_BxT,), slice(None)

    @nn.nowrap
    def cache_window(self) -> Optional[int]:
        """The positions a sequence's self-attention cache keeps: a sliding window's (a ring, see KVCache), or
        None: every position up to the cache's length."""
        return self.cfg.sliding_window if self.cfg.attention == "sliding_window" else None

    @nn.nowrap
    def layers_line(self) -> str:
        return f"{self.cfg.num_layers} layers"

    @nn.nowrap
    def prompt_arrays(self, ids: Sequence[int], pad: Callable[[Sequence[int]], np.ndarray]) -> tuple[np.ndarray, ...]:
        """`prefill`'s arguments for a generation prompt: the prompt padded by `pad` ([1, L]), and its length."""
        return pad(ids), np.int32(len(ids))

    @nn.nowrap
    def empty_source(self, batch: int) -> None:
        """What `prefill` keeps of a prompt beside the caches, for `batch` sequences: nothing."""
        return None

    def prefill(
        self, ids_1xL: jax.Array, length: jax.Array, *, caches: tuple[KVCache, ...]
    ) -> tuple[jax.Array, tuple[KVCache, ...], None]:
        """A prompt (`length` tokens, then padding) run into fresh caches: logits [1, L, V], the caches, no source."""
        pos_1xL = default_positions(ids_1xL)
        logits_1xLxV, new_caches = self(ids_1xL, pos_BxT=pos_1xL, valid_BxT=pos_1xL < length, caches=caches)
        return logits_1xLxV, new_caches, None

    def decode_step(
        self, ids_Bx1: jax.Array, pos_Bx1: jax.Array, caches: tuple[KVCache, ...], source: None
    ) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """One new token per sequence at `pos_Bx1`: logits [B, 1, V] and the updated caches."""
        return self(ids_Bx1, pos_BxT=pos_Bx1, caches=caches)

    def features(self, ids_BxT: jax.Array, valid_BxT: jax.Array) -> jax.Array:
        """The hidden states [B, T, D] text embeddings pool: the final (normed) ones."""
        return self.hidden(ids_BxT, valid_BxT=valid_BxT)[0]

    def hidden(
        self, ids_BxT, *, pos_BxT=None, valid_BxT=None, caches=None, deterministic=True
    ) -> tuple[jax.Array, Optional[tuple[KVCache, ...]]]:
        """Final hidden states [B, T, D] (after the final norm), and the updated caches."""
        q_pos_BxT = default_positions(ids_BxT) if pos_BxT is None else pos_BxT
        if caches is None:
            k_pos_BxS, k_valid_BxS = q_pos_BxT, valid_BxT
        else:
            k_pos_BxS, k_valid_BxS = cached_key_positions(q_pos_BxT, caches[0].max_len, valid_BxT, caches[0].ring)
        mask, bias, pattern = self_attention_inputs(
            self.cfg,
            q_pos_BxT,
            k_pos_BxS,
            causal=True,
            k_valid_BxS=k_valid_BxS,
            whole_pass=caches is None and (deterministic or self.cfg.dropout == 0.0),
            contiguous=caches is None and pos_BxT is None,
        )
        # Each sequence's length so far, padding not counted: some RoPE scalings depend on it.
        real_pos_BxT = q_pos_BxT if valid_BxT is None else jnp.where(valid_BxT, q_pos_BxT, 0)
        x_BxTxD = self.dropout(self.embedder.embed(ids_BxT, q_pos_BxT), deterministic=deterministic)
        hidden_BxTxD, new_caches, _ = self.stack(
            x_BxTxD,
            mask=mask,
            bias=bias,
            pattern=pattern,
            q_pos_BxT=q_pos_BxT,
            k_pos_BxS=k_pos_BxS,
            caches=caches,
            rope_len_B=jnp.max(real_pos_BxT, axis=1) + 1,
            deterministic=deterministic,
        )
        return hidden_BxTxD, new_caches
