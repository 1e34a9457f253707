"""Position-wise feed-forward networks: ReLU (the 2017 original), its square (Primer), GELU (GPT-2), SwiGLU (Llama)."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mulm_jax.nn.hooks import hook

ACTIVATIONS = {"relu": nn.relu, "relu2": lambda x: jnp.square(nn.relu(x)), "gelu": nn.gelu}


class FeedForward(nn.Module):
    """D -> F -> D. `swiglu` is down(silu(gate(x)) * up(x)), with three matrices instead of two.

    Hook points (nn.hooks), [B, T, F] unless noted: pre (before the activation: SwiGLU's gate), pre_linear (SwiGLU's
    up projection), post (after the activation and the gating) and out ([B, T, D])."""

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
            feats, use_bias=self.use_bias, dtype=self.dtype, name=name, kernel_init=nn.initializers.normal(std)
        )
        # Tokens on one axis: XLA:CPU then takes the weight gradients straight from the [N, F] activations
        # instead of first copying them transposed, which halves this layer's backward pass.
        x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
        lead = x_BxTxD.shape[:-1]
        point = lambda name, x_NxC: hook(self, name, x_NxC.reshape(*lead, -1)).reshape(x_NxC.shape)  # noqa: E731
        if self.activation == "swiglu":
            if self.has_variable("params", "gate_up"):  # see fused_projections
                gate_NxF, up_NxF = jnp.split(dense(2 * self.d_ff, "gate_up")(x_NxD), 2, axis=1)
            else:
                gate_NxF, up_NxF = dense(self.d_ff, "gate")(x_NxD), dense(self.d_ff, "up")(x_NxD)
            h_NxF = nn.silu(point("pre", gate_NxF)) * point("pre_linear", up_NxF)
        elif self.activation in ACTIVATIONS:
            h_NxF = ACTIVATIONS[self.activation](point("pre", dense(self.d_ff, "up")(x_NxD)))
        else:
            raise ValueError(f"feed-forward activation {self.activation!r} is not one of relu, relu2, gelu, swiglu")
        y_NxD = dense(self.d_model, "down", self.out_init_std)(point("post", h_NxF))
        return hook(self, "out", y_NxD.reshape(*lead, self.d_model))
