"""Position-wise feed-forward networks: ReLU (the 2017 original), its square (Primer), GELU (GPT-2), SwiGLU (Llama)."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "relu2": lambda x: jnp.square(nn.relu(x)), "gelu": nn.gelu}


class FeedForward(nn.Module):
    """D -> F -> D. `swiglu` is down(silu(gate(x)) * up(x)), with three matrices instead of two."""

    d_model: int
    d_ff: int
    activation: Literal["relu", "relu2", "gelu", "swiglu"] = "gelu"
    use_bias: bool = True
    out_init_std: float = 0.02  # GPT-2 scales residual-branch outputs down by sqrt(2 * layers)
    dtype: Any = jnp.float32

    def fused_projections(self) -> dict[str, tuple[str, ...]]:
        """Projections of one input that may be held as one, as the serving layout does (infer.layout): SwiGLU's
        gate and up."""
        return {"gate_up": ("gate", "up")} if self.activation == "swiglu" else {}

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        dense = lambda feats, name, std=0.02: nn.Dense(  # noqa: E731
            feats, use_bias=self.use_bias, dtype=self.dtype, name=name,
            kernel_init=nn.initializers.normal(std))
        # Tokens on one axis: XLA:CPU then takes the weight gradients straight from the [N, F] activations
        # instead of first copying them transposed, which halves this layer's backward pass.
        x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
        if self.activation == "swiglu" and self.has_variable("params", "gate_up"):  # see fused_projections
            gate_NxF, up_NxF = jnp.split(dense(2 * self.d_ff, "gate_up")(x_NxD), 2, axis=1)
            h_NxF = nn.silu(gate_NxF) * up_NxF
        elif self.activation == "swiglu":
            h_NxF = nn.silu(dense(self.d_ff, "gate")(x_NxD)) * dense(self.d_ff, "up")(x_NxD)
        elif self.activation in ACTIVATIONS:
            h_NxF = ACTIVATIONS[self.activation](dense(self.d_ff, "up")(x_NxD))
        else:
            raise ValueError(f"feed-forward activation {self.activation!r} is not one of relu, relu2, gelu, swiglu")
        return dense(self.d_model, "down", self.out_init_std)(h_NxF).reshape(*x_BxTxD.shape[:-1], self.d_model)
