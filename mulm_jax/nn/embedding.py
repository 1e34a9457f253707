"""Token embedding and output head (optionally tied to the embedding), plus absolute positional inputs."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mulm_jax.nn.hooks import hook
from mulm_jax.nn.positional import LearnedPositionalEmbedding, sinusoidal_table


class Embedder(nn.Module):
    """ids -> vectors (with sinusoidal or learned positions added), and vectors -> logits.

    scale: multiply token vectors by sqrt(D), as the 2017 Transformer does. tie: logits = x @ E^T.
    softcap: logits = softcap * tanh(logits / softcap), which keeps them within +-softcap. zero_head: an untied
    head starts at zero (every logit 0 at first).
    """

    vocab_size: int
    d_model: int
    max_seq_len: int
    positional: str = "none"  # only "sinusoidal" and "learned" add anything here
    tie: bool = True
    scale: bool = False
    softcap: Optional[float] = None
    zero_head: bool = False
    dtype: Any = jnp.float32

    def setup(self) -> None:
        init = nn.initializers.normal(0.02)
        self.token = nn.Embed(self.vocab_size, self.d_model, embedding_init=init, dtype=self.dtype, name="token")
        if self.positional == "learned":
            self.position = LearnedPositionalEmbedding(
                self.max_seq_len, self.d_model, dtype=self.dtype, name="position"
            )
        if not self.tie:
            self.head = nn.Dense(
                self.vocab_size,
                use_bias=False,
                dtype=self.dtype,
                name="head",
                kernel_init=nn.initializers.zeros if self.zero_head else init,
            )

    def embed(self, ids_BxT: jax.Array, pos_BxT: jax.Array, stack: str = "") -> jax.Array:
        """Token vectors plus position vectors; hook points `{stack}embed` (the token's, scaled) and
        `{stack}pos_embed` (sinusoidal or learned), with stack "" (the decoder) or "encoder."."""
        x_BxTxD = self.token(ids_BxT)
        if self.scale:
            x_BxTxD = x_BxTxD * jnp.asarray(self.d_model**0.5, x_BxTxD.dtype)
        x_BxTxD = hook(self, f"{stack}embed", x_BxTxD)
        if self.positional == "sinusoidal":
            pos_BxTxD = sinusoidal_table(self.max_seq_len, self.d_model)[pos_BxT].astype(x_BxTxD.dtype)
        elif self.positional == "learned":
            pos_BxTxD = self.position(pos_BxT)
        else:
            return x_BxTxD
        return x_BxTxD + hook(self, f"{stack}pos_embed", pos_BxTxD)

    def logits(self, x_BxTxD: jax.Array) -> jax.Array:
        """Logits in float32 whatever the compute dtype, for a stable softmax and loss."""
        logits_BxTxV = (self.token.attend(x_BxTxD) if self.tie else self.head(x_BxTxD)).astype(jnp.float32)
        if self.softcap is not None:
            logits_BxTxV = self.softcap * jnp.tanh(logits_BxTxV / self.softcap)
        return logits_BxTxV
