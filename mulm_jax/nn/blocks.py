"""Transformer blocks: self-attention (+ cross-attention) + feed-forward with residuals, pre- or post-norm."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mulm_jax.config import ModelConfig
from mulm_jax.errors import MulmError
from mulm_jax.nn.attention import Attention, KVCache
from mulm_jax.nn.efficient_attention import AttentionPattern
from mulm_jax.nn.feedforward import FeedForward
from mulm_jax.nn.hooks import any_active, hook

STACKED = "layers"  # a scanned stack's one Block: each of its parameters stacked, [num_layers, ...]


class Norm(nn.Module):
    """LayerNorm ((x - mean) / std * scale + bias) or RMSNorm (x / rms * scale), statistics in float32, as Flax's
    own (the same parameters, the same fast variance E[x^2] - E[x]^2), with its hook points: `scale_factor` (the
    1 / std or 1 / rms each position is multiplied by, [..., 1]) and `out`."""

    kind: str = "layernorm"  # or "rmsnorm"
    epsilon: float = 1e-6
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        D = x_BxTxD.shape[-1]
        x_BxTxD32 = x_BxTxD.astype(jnp.float32)
        mean_sq_BxTx1 = jnp.mean(jnp.square(x_BxTxD32), axis=-1, keepdims=True)
        if self.kind == "rmsnorm":
            centred_BxTxD, var_BxTx1 = x_BxTxD32, mean_sq_BxTx1
        else:
            mean_BxTx1 = jnp.mean(x_BxTxD32, axis=-1, keepdims=True)
            centred_BxTxD = x_BxTxD32 - mean_BxTx1
            var_BxTx1 = jnp.maximum(mean_sq_BxTx1 - jnp.square(mean_BxTx1), 0.0)
        factor_BxTx1 = hook(self, "scale_factor", lax.rsqrt(var_BxTx1 + self.epsilon))
        y_BxTxD = centred_BxTxD * factor_BxTx1 * self.param("scale", nn.initializers.ones, (D,), jnp.float32)
        if self.kind != "rmsnorm" and self.use_bias:
            y_BxTxD = y_BxTxD + self.param("bias", nn.initializers.zeros, (D,), jnp.float32)
        return hook(self, "out", y_BxTxD.astype(self.dtype))


def make_norm(cfg: ModelConfig, name: str) -> Norm:
    """LayerNorm (with a bias when cfg.use_bias) or RMSNorm; statistics in float32."""
    return Norm(cfg.norm, cfg.norm_eps, cfg.use_bias, cfg.dtype, name=name)


class Block(nn.Module):
    """One layer. Encoder: bidirectional mask, no cross. Decoder: causal mask, cross-attention when given `memory`.

    Pre-norm:  x = x + f(norm(x)) for each sublayer f (GPT-2, Llama).
    Post-norm: x = norm(x + f(x)) (the 2017 Transformer).
    The ablations (docs/models.md): without cfg.residual, x = f(norm(x)) and x = norm(f(x)); with cfg.mlp none, no
    feed-forward sublayer (its hook point resid_post then holds the attention's output stream, as resid_mid).
    """

    cfg: ModelConfig
    cross_attention: bool = False
    num_stack_layers: int = 1  # layers in this block's stack: residual outputs start at 0.02 / sqrt(2 * that)
    # (at zero with cfg.zero_init_outputs)
    deterministic: bool = True  # an attribute, not an argument, so that nn.remat sees it as static

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        *,
        mask: Optional[jax.Array],
        bias: Optional[jax.Array],
        q_pos_BxT: jax.Array,
        pattern: Optional[AttentionPattern] = None,
        k_pos_BxS: jax.Array,
        memory_BxSxD: Optional[jax.Array] = None,
        memory_mask: Optional[jax.Array] = None,
        cache: Optional[KVCache] = None,
        cross_cache: Optional[KVCache] = None,
        rope_len_B: Optional[jax.Array] = None,
    ) -> tuple[jax.Array, Optional[KVCache], Optional[KVCache]]:
        """Returns the output, the updated self-attention cache, and the cross-attention keys/values (the
        encoder output projected; passing them back as `cross_cache` spares the projection and `memory`)."""
        cfg = self.cfg
        deterministic = self.deterministic
        dtype = jnp.dtype(cfg.dtype)
        out_std = 0.0 if cfg.zero_init_outputs else 0.02 / (2 * self.num_stack_layers) ** 0.5
        attention = lambda name, rope, cross=False: Attention(  # noqa: E731
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.head_dim,
            use_bias=cfg.use_bias,
            qkv_bias=cfg.qkv_bias,
            dropout=cfg.dropout,
            rope_theta=cfg.rope_theta if rope else None,
            rope_scaling=cfg.rope_scaling,
            max_seq_len=cfg.max_seq_len,
            out_init_std=out_std,
            cross=cross,
            qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps,
            attention_scale=cfg.attention_scale,
            dtype=dtype,
            name=name,
        )
        residual_dropout = nn.Dropout(cfg.dropout)

        def sublayer(x, name: str, f, resid: str):
            def branch(h):
                y = residual_dropout(f(h), deterministic=deterministic)
                return x + y if cfg.residual else y

            if cfg.norm_position == "pre":
                x = branch(make_norm(cfg, f"{name}_norm")(x))
            else:
                x = make_norm(cfg, f"{name}_norm")(branch(x))
            return hook(self, resid, x)

        def self_attend(h):
            nonlocal cache
            y, cache = attention("self_attention", cfg.positional == "rope")(
                h,
                mask=mask,
                bias=bias,
                pattern=pattern,
                q_pos_BxT=q_pos_BxT,
                k_pos_BxS=k_pos_BxS,
                cache=cache,
                rope_len_B=rope_len_B,
                deterministic=deterministic,
            )
            return y

        x_BxTxD = hook(self, "resid_pre", x_BxTxD)
        x_BxTxD = sublayer(x_BxTxD, "self_attention", self_attend, "resid_mid")

        def cross_attend(h):
            nonlocal cross_cache
            y, cross_cache = attention("cross_attention", False, cross=True)(
                h, memory_BxSxD, mask=memory_mask, cache=cross_cache, deterministic=deterministic
            )
            return y

        if self.cross_attention:
            if memory_BxSxD is None and cross_cache is None:
                raise ValueError("a decoder block with cross-attention needs the encoder output (memory_BxSxD)")
            x_BxTxD = sublayer(x_BxTxD, "cross_attention", cross_attend, "resid_mid_cross")
        if cfg.mlp == "ffn":
            ffn = FeedForward(cfg.d_model, cfg.ff_dim, cfg.ffn, cfg.use_bias, out_std, dtype, name="ffn")
            x_BxTxD = sublayer(x_BxTxD, "ffn", ffn, "resid_post")
        else:
            x_BxTxD = hook(self, "resid_post", x_BxTxD)
        return x_BxTxD, cache, cross_cache


class BlockStack(nn.Module):
    """num_layers blocks, then a final norm for pre-norm stacks.

    `caches`: one self-attention KVCache per layer, or None; `cross_caches` likewise for the cross-attention
    keys/values of a decoder stack. Returns (output, updated caches or None, cross caches or None).

    Unscanned, the blocks are modules `layer_0` ... `layer_{N-1}`; with cfg.scan_layers, one Block `layers` whose
    parameters are stacked [num_layers, ...] runs under lax.scan (whole passes only: no caches, no hook points).
    """

    cfg: ModelConfig
    num_layers: int
    cross_attention: bool = False
    remat: bool = False  # recompute each block's activations in the backward pass instead of storing them

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        *,
        caches: Optional[tuple[KVCache, ...]] = None,
        cross_caches: Optional[tuple[KVCache, ...]] = None,
        deterministic: bool = True,
        **kwargs: Any,
    ) -> tuple[jax.Array, Optional[tuple[KVCache, ...]], Optional[tuple[KVCache, ...]]]:
        if self.cfg.scan_layers:
            x_BxTxD = self._scanned(x_BxTxD, caches, cross_caches, deterministic, kwargs)
            new_caches = new_cross_caches = None
        else:
            block_cls = nn.remat(Block) if self.remat else Block
            new_caches, new_cross_caches = [], []
            for i in range(self.num_layers):
                x_BxTxD, cache, cross_cache = block_cls(
                    self.cfg, self.cross_attention, self.num_layers, deterministic, name=f"layer_{i}"
                )(
                    x_BxTxD,
                    cache=None if caches is None else caches[i],
                    cross_cache=None if cross_caches is None else cross_caches[i],
                    **kwargs,
                )
                new_caches.append(cache)
                new_cross_caches.append(cross_cache)
        if self.cfg.norm_position == "pre":
            x_BxTxD = make_norm(self.cfg, "final_norm")(x_BxTxD)
        return (
            x_BxTxD,
            None if caches is None else tuple(new_caches),
            tuple(new_cross_caches) if self.cross_attention and new_cross_caches is not None else None,
        )

    @nn.nowrap
    def _scanned(
        self, x_BxTxD: jax.Array, caches: Any, cross_caches: Any, deterministic: bool, kwargs: dict[str, Any]
    ) -> jax.Array:
        """The layers as one lax.scan over one Block, remat'd per layer with self.remat (run within __call__)."""
        if caches is not None or cross_caches is not None or any_active():
            raise MulmError(
                "a model with model.scan_layers=true runs whole passes only: KV caches (generation) and hook points "
                "(inspection) need its layers one by one; load the run with mulm_jax.infer.load_model (it gives the "
                "per-layer model), or convert the params with mulm_jax.models.layers.per_layer and build the model "
                "with model.scan_layers=false"
            )
        # Inside scan, remat's CSE prevention is unnecessary and costs speed (the Flax docs' advice).
        block_cls = nn.remat(Block, prevent_cse=False) if self.remat else Block
        names = sorted(kwargs)

        def body(block: Block, x_BxTxD: jax.Array, *args: Any) -> tuple[jax.Array, None]:
            return block(x_BxTxD, **dict(zip(names, args)))[0], None

        scan = nn.scan(
            body,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(names),
            length=self.num_layers,
        )
        block = block_cls(self.cfg, self.cross_attention, self.num_layers, deterministic, name=STACKED)
        return scan(block, x_BxTxD, *(kwargs[n] for n in names))[0]
