"""Position-wise feed-forward networks: ReLU (the 2017 original), GELU (GPT-2), SwiGLU (Llama)."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu}


class FeedForward(nn.Module):
    """D -> F -> D. `swiglu` is down(silu(gate(x)) * up(x)), with three matrices instead of two."""

    d_model: int
    d_ff: int
    activation: Literal["relu", "gelu", "swiglu"] = "gelu"
    use_bias: bool = True
    out_init_std: float = 0.02  # GPT-2 scales residual-branch outputs down by sqrt(2 * layers)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        dense = lambda feats, name, std=0.02: nn.Dense(  # noqa: E731
            feats, use_bias=self.use_bias, dtype=self.dtype, name=name,
            kernel_init=nn.initializers.normal(std))
        if self.activation == "swiglu":
            h_BxTxF = nn.silu(dense(self.d_ff, "gate")(x_BxTxD)) * dense(self.d_ff, "up")(x_BxTxD)
        elif self.activation in ACTIVATIONS:
            h_BxTxF = ACTIVATIONS[self.activation](dense(self.d_ff, "up")(x_BxTxD))
        else:
            raise ValueError(f"feed-forward activation {self.activation!r} is not one of relu, gelu, swiglu")
        return dense(self.d_model, "down", self.out_init_std)(h_BxTxF)
