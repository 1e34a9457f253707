"""Attention: masks from positions, the scaled dot-product core, and multi-/grouped-/multi-query attention with a KV cache."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mulm_jax.config import RopeScaling
from mulm_jax.nn import hooks
from mulm_jax.nn.positional import apply_rope, rope_frequencies


@flax.struct.dataclass
class KVCache:
    """One layer's keys and values, static shape [B, K, S_max, Dh]: slot s of each kv head holds position s.

    A `ring` cache (a sliding window's, S_max = the window) holds instead, in slot s, the newest position p
    written with p % S_max == s: its memory is the window's, however long the sequence grows.

    The kv-head axis comes before the positions so that attention over the cache is one batched matmul over
    B * K matrices that lie contiguous in memory; with positions first, XLA:CPU copies the whole cache
    transposed on every decode step (bench/bench_decode.py: 2x slower for GPT-2 small at 1024 positions).
    """

    k_BxKxSxDh: jax.Array
    v_BxKxSxDh: jax.Array
    ring: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def max_len(self) -> int:
        return self.k_BxKxSxDh.shape[2]

    @classmethod
    def zeros(
        cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32, ring: bool = False
    ) -> "KVCache":
        shape = (batch, num_kv_heads, max_len, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), ring)

    @classmethod
    def of(cls, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array) -> "KVCache":
        """A cache holding exactly these keys and values (cross-attention over an encoder output)."""
        return cls(k_BxSxKxDh.transpose(0, 2, 1, 3), v_BxSxKxDh.transpose(0, 2, 1, 3))

    def write(self, k_BxTxKxDh: jax.Array, v_BxTxKxDh: jax.Array, start_B: jax.Array) -> "KVCache":
        """Write T new keys/values per sequence at that sequence's own start position, in place under jit (a ring
        cache takes one position a step, at its slot start % S_max)."""
        if self.ring:
            if k_BxTxKxDh.shape[1] != 1:
                raise ValueError(
                    f"a ring cache is written one position a step, not {k_BxTxKxDh.shape[1]}: prefill "
                    "a cache of slot s = position s and convert it with as_ring"
                )
            start_B = start_B % self.max_len

        def put(buf_KxSxDh, new_TxKxDh, start):
            new_KxTxDh = new_TxKxDh.transpose(1, 0, 2).astype(buf_KxSxDh.dtype)
            return lax.dynamic_update_slice(buf_KxSxDh, new_KxTxDh, (0, start, 0))

        return KVCache(
            jax.vmap(put)(self.k_BxKxSxDh, k_BxTxKxDh, start_B),
            jax.vmap(put)(self.v_BxKxSxDh, v_BxTxKxDh, start_B),
            self.ring,
        )

    def as_ring(self, length_B: jax.Array, window: int) -> "KVCache":
        """This cache (slot s = position s, positions below length_B written) as a ring of `window` slots that
        holds the newest `window` of them; slots with no position yet hold anything (masked, see
        models.masks.cached_key_positions)."""
        slots_W = jnp.arange(window)
        pos_BxW = slots_W + window * jnp.floor_divide(length_B[:, None] - 1 - slots_W, window)
        index_Bx1xWx1 = jnp.clip(pos_BxW, 0, self.max_len - 1)[:, None, :, None]
        take = lambda buf: jnp.take_along_axis(buf, index_Bx1xWx1, axis=2)  # noqa: E731
        return KVCache(take(self.k_BxKxSxDh), take(self.v_BxKxSxDh), ring=True)


def attention_mask(
    q_pos_BxT: jax.Array,
    k_pos_BxS: jax.Array,
    *,
    causal: bool,
    window: Optional[int] = None,
    block_size: Optional[int] = None,
    num_global: int = 0,
    k_valid_BxS: Optional[jax.Array] = None,
) -> jax.Array:
    """Which keys each query may see, as bool [B, 1, T, S], built from absolute positions.

    causal: keys at or before the query. window: keys fewer than `window` positions away.
    block_size: keys in the query's own block of `block_size` positions, plus the first `num_global`
    positions (which in turn see everything allowed). k_valid: False marks padding keys.
    """
    q_BxTx1 = q_pos_BxT[:, :, None]
    k_Bx1xS = k_pos_BxS[:, None, :]
    mask_BxTxS = jnp.ones(jnp.broadcast_shapes(q_BxTx1.shape, k_Bx1xS.shape), bool)
    if causal:
        mask_BxTxS &= k_Bx1xS <= q_BxTx1
    if window is not None:
        mask_BxTxS &= jnp.abs(q_BxTx1 - k_Bx1xS) < window
    if block_size is not None:
        local = (q_BxTx1 // block_size) == (k_Bx1xS // block_size)
        mask_BxTxS &= local | (k_Bx1xS < num_global) | (q_BxTx1 < num_global)
    if k_valid_BxS is not None:
        mask_BxTxS &= k_valid_BxS[:, None, :]
    return mask_BxTxS[:, None]


def dot_product_attention(
    q_BxTxHxDh: jax.Array,
    k_BxKxSxDh: jax.Array,
    v_BxKxSxDh: jax.Array,
    mask: Optional[jax.Array] = None,
    bias: Optional[jax.Array] = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Optional[jax.Array] = None,
    cached: Optional[KVCache] = None,
    with_weights: bool = True,
    hook: Optional[Callable[[str, jax.Array], jax.Array]] = None,
    scale: Optional[float] = None,
) -> tuple[jax.Array, Optional[jax.Array]]:
    """softmax(q k^T * scale + bias, masked) v, with each of K kv heads shared by H / K query heads; scale: the
    scores' factor (None: 1 / sqrt(Dh)).

    Keys and values are kv-head major, as the cache holds them. `cached`: earlier keys and values attended
    to as well, ahead of k and v (so S counts the cache's slots first). mask: bool broadcastable to
    [B, H, T, S] (True = attend); bias: float broadcastable to the same. Returns the output [B, T, H, Dh]
    and the attention weights [B, H, T, S] (float32), or None for them when not `with_weights`: with a cache
    and no dropout, only the cache chunks that some query may see are then read (cached_attention).
    `hook(name, value)`: the hook point of the scores (scaled, biased, before the mask) [B, H, T, S], the pattern
    (the weights) and z (the output) [B, T, H, Dh], whose value it may replace (see nn.hooks).
    """
    B, T, H, Dh = q_BxTxHxDh.shape
    K = k_BxKxSxDh.shape[1]
    if H % K:
        raise ValueError(f"{H} query heads cannot be shared evenly among {K} kv heads")
    G = H // K
    if cached is not None and not with_weights and not (dropout_rate > 0.0 and dropout_rng is not None):
        return cached_attention(q_BxTxHxDh, k_BxKxSxDh, v_BxKxSxDh, cached, mask, bias, scale), None
    chunks = (
        [(k_BxKxSxDh, v_BxKxSxDh)]
        if cached is None
        else [
            (cached.k_BxKxSxDh.astype(k_BxKxSxDh.dtype), cached.v_BxKxSxDh.astype(v_BxKxSxDh.dtype)),
            (k_BxKxSxDh, v_BxKxSxDh),
        ]
    )
    lengths = [k.shape[2] for k, _ in chunks]
    S = sum(lengths)
    # Every product is a matmul batched over one axis of B * K: XLA:CPU runs a single batch axis as one
    # well-threaded call, and copies operands around when there are two.
    q_BKxGTxDh = _grouped_queries(q_BxTxHxDh, K, scale)
    logits_BKxGTxS = jnp.concatenate(
        [jnp.matmul(q_BKxGTxDh, k.reshape(B * K, n, Dh).swapaxes(1, 2)) for (k, _), n in zip(chunks, lengths)], axis=-1
    )
    hook = hook or (lambda name, x: x)
    scores_BxHxTxS = hook(
        "scores", _biased_and_masked(logits_BKxGTxS.reshape(B, H, T, S).astype(jnp.float32), bias, None)
    )
    probs_BxHxTxS = hook("pattern", jax.nn.softmax(_biased_and_masked(scores_BxHxTxS, None, mask), axis=-1))
    used_BxHxTxS = probs_BxHxTxS
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, used_BxHxTxS.shape)
        used_BxHxTxS = jnp.where(keep, used_BxHxTxS / (1.0 - dropout_rate), 0.0)
    used_BKxGTxS = used_BxHxTxS.astype(v_BxKxSxDh.dtype).reshape(B * K, G * T, S)
    offsets = [0] + list(itertools.accumulate(lengths))
    out_BKxGTxDh = sum(
        jnp.matmul(used_BKxGTxS[..., start : start + n], v.reshape(B * K, n, Dh))
        for (_, v), start, n in zip(chunks, offsets, lengths)
    )
    return hook("z", out_BKxGTxDh.reshape(B, H, T, Dh).transpose(0, 2, 1, 3)), probs_BxHxTxS


CACHE_CHUNK = 128  # cache positions per step of cached_attention's loop


def _biased_and_masked(logits: jax.Array, bias: Optional[jax.Array], mask: Optional[jax.Array]) -> jax.Array:
    """Float32 logits plus the bias, masked-out keys set to float32's lowest value (not -inf: a row that sees no
    key then stays finite)."""
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return logits


def _grouped_queries(q_BxTxHxDh: jax.Array, K: int, scale: Optional[float]) -> jax.Array:
    """Queries times `scale` (None: 1 / sqrt(Dh)) as [B * K, G * T, Dh]: the G query heads of each kv head
    together."""
    B, T, H, Dh = q_BxTxHxDh.shape
    return (
        (q_BxTxHxDh * jnp.asarray(Dh**-0.5 if scale is None else scale, q_BxTxHxDh.dtype))
        .reshape(B, T, K, H // K, Dh)
        .transpose(0, 2, 3, 1, 4)
        .reshape(B * K, H // K * T, Dh)
    )


def cached_attention(
    q_BxTxHxDh: jax.Array,
    k_BxKxTxDh: jax.Array,
    v_BxKxTxDh: jax.Array,
    cached: KVCache,
    mask: Optional[jax.Array] = None,
    bias: Optional[jax.Array] = None,
    scale: Optional[float] = None,
) -> jax.Array:
    """dot_product_attention over a cache and then the T new keys, reading only the cache chunks (CACHE_CHUNK
    positions each) that the mask lets some query see, with an online softmax.

    A decode step's cache has room for the whole context, but a sequence at position p sees only slots below
    p: for GPT-2 small at 8 sequences and 1024 positions, reading every slot cost about 35 ms of each step on
    the 2-core dev machine. The chunks to read are found from the mask at run time, so one compiled step
    serves every length; in a prefill's fresh cache nothing is visible and no chunk is read; a sliding window
    reads only the chunks under the window. mask / bias / scale: as for dot_product_attention, over the
    cache's S_max slots and then the T new keys. Returns the output [B, T, H, Dh].
    """
    B, T, H, Dh = q_BxTxHxDh.shape
    K, S = cached.k_BxKxSxDh.shape[1], cached.max_len
    G = H // K
    chunk = CACHE_CHUNK if S % CACHE_CHUNK == 0 else S
    q_BKxGTxDh = _grouped_queries(q_BxTxHxDh, K, scale)
    full = lambda x: None if x is None else jnp.broadcast_to(x, (B, x.shape[1], T, S + T))  # noqa: E731
    mask, bias = full(mask), full(bias)

    def scores(k_BxKxNxDh, start):
        """Masked, biased logits [B, H, T, N] of the queries against the N keys starting at slot `start`."""
        n = k_BxKxNxDh.shape[2]
        k_BKxNxDh = k_BxKxNxDh.reshape(B * K, n, Dh)
        if n == 1:  # a decode step's own key: a multiply-and-sum, not B * K one-element matmuls
            logits = jnp.sum(q_BKxGTxDh * k_BKxNxDh, axis=-1, keepdims=True)
        else:
            logits = jnp.matmul(q_BKxGTxDh, k_BKxNxDh.swapaxes(1, 2))
        window = lambda x: None if x is None else lax.dynamic_slice_in_dim(x, start, n, axis=3)  # noqa: E731
        return _biased_and_masked(logits.reshape(B, H, T, n).astype(jnp.float32), window(bias), window(mask))

    def accumulate(carry, logits_BxHxTxN, v_BxKxNxDh):
        """Online softmax: fold n more keys into the running max, normalizer and weighted sum of values."""
        max_BxHxT, norm_BxHxT, out_BKxGTxDh = carry
        new_max = jnp.maximum(max_BxHxT, logits_BxHxTxN.max(-1))
        weights_BxHxTxN = jnp.exp(logits_BxHxTxN - new_max[..., None])
        rescale = jnp.exp(max_BxHxT - new_max)
        n = v_BxKxNxDh.shape[2]
        weights_BKxGTxN = weights_BxHxTxN.astype(v_BxKxNxDh.dtype).reshape(B * K, G * T, n)
        v_BKxNxDh = v_BxKxNxDh.reshape(B * K, n, Dh)
        values = weights_BKxGTxN * v_BKxNxDh if n == 1 else jnp.matmul(weights_BKxGTxN, v_BKxNxDh)
        return (
            new_max,
            norm_BxHxT * rescale + weights_BxHxTxN.sum(-1),
            out_BKxGTxDh * rescale.reshape(B * K, G * T, 1) + values.astype(jnp.float32),
        )

    # Chunks from the first to the last cache slot any query may see (an empty range when none is).
    seen_S = jnp.ones((S,), bool) if mask is None else jnp.any(mask[..., :S], axis=(0, 1, 2))
    any_seen = jnp.any(seen_S)
    first = jnp.where(any_seen, jnp.argmax(seen_S), S)
    last = jnp.where(any_seen, S - jnp.argmax(seen_S[::-1]), 0)

    def chunk_step(i, carry):
        start = i * chunk
        k_chunk = lax.dynamic_slice_in_dim(cached.k_BxKxSxDh, start, chunk, axis=2).astype(q_BxTxHxDh.dtype)
        v_chunk = lax.dynamic_slice_in_dim(cached.v_BxKxSxDh, start, chunk, axis=2).astype(q_BxTxHxDh.dtype)
        return accumulate(carry, scores(k_chunk, start), v_chunk)

    neg = jnp.full((B, H, T), -jnp.inf, jnp.float32)
    carry = (neg, jnp.zeros((B, H, T), jnp.float32), jnp.zeros((B * K, G * T, Dh), jnp.float32))
    carry = lax.fori_loop(first // chunk, (last + chunk - 1) // chunk, chunk_step, carry)
    carry = accumulate(carry, scores(k_BxKxTxDh, S), v_BxKxTxDh)
    _, norm_BxHxT, out_BKxGTxDh = carry
    out_BKxGTxDh = out_BKxGTxDh / norm_BxHxT.reshape(B * K, G * T, 1)
    return out_BKxGTxDh.astype(q_BxTxHxDh.dtype).reshape(B, H, T, Dh).transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """Projections + core. num_kv_heads = num_heads: multi-head; 1: multi-query; in between: grouped-query.

    Self-attention: with RoPE (`rope_theta` set), queries and keys are rotated by their absolute positions;
    `rope_len_B`, each sequence's length so far (default: its largest query position + 1), sets the frequencies
    of the scalings that depend on it (dynamic, longrope).
    With a `cache`, the queries attend over the cache's S_max slots (slot s = position s) and then the T new
    keys, so the mask is [B, 1, T, S_max + T] with the slots at or past `q_pos_BxT[:, 0]` hidden (see
    models.masks.cached_key_positions); the new keys/values are then written at `q_pos_BxT[:, 0]` onwards.

    attention_scale: "sqrt" scales the scores q . k by 1 / sqrt(head_dim); "none" leaves them unscaled (an
    ablation: docs/models.md).

    qk_norm: each head's queries and keys are RMS-normalised (with a learnt scale per head dimension) before RoPE
    and the dot product, which bounds the attention logits (OLMo 2, modded-nanogpt).

    Cross-attention (`cross=True`): keys and values are projected from the encoder output `kv_BxSxD`, and
    returned as a cache; given that cache instead, later decode steps skip the projection.

    Returns (output [B, T, D], the updated cache: None for self-attention without one).

    Hook points (nn.hooks): q, k, v (k, v: projected from the keys' source, not read from a cache), rot_q, rot_k
    (after RoPE), scores, pattern, z, head_out (each head's z_h W_O,h, [B, T, H, D], computed only when cached or
    edited: the output is then their sum plus the bias) and out.

    Params that hold a `qkv` projection instead of `query`, `key` and `value` (self-attention in the serving
    layout, infer.layout, which concatenates them as `fused_projections` says) make one product for all three.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_bias: bool = True
    qkv_bias: Optional[bool] = None  # None: use_bias
    dropout: float = 0.0
    rope_theta: Optional[float] = None
    rope_scaling: Optional[RopeScaling] = None
    max_seq_len: int = 0
    out_init_std: float = 0.02  # GPT-2 scales residual-branch outputs down by sqrt(2 * layers); 0: zeros
    cross: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-6
    attention_scale: str = "sqrt"  # or "none"
    dtype: Any = jnp.float32

    def fused_projections(self) -> dict[str, tuple[str, ...]]:
        """Projections of one input that may be held as one (their output features concatenated in this order)."""
        return {} if self.cross else {"qkv": ("query", "key", "value")}

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        kv_BxSxD: Optional[jax.Array] = None,
        *,
        mask: Optional[jax.Array] = None,
        bias: Optional[jax.Array] = None,
        pattern: Optional[Any] = None,
        q_pos_BxT: Optional[jax.Array] = None,
        k_pos_BxS: Optional[jax.Array] = None,
        cache: Optional[KVCache] = None,
        rope_len_B: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, Optional[KVCache]]:
        B, T, D = x_BxTxD.shape
        H, K, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        qkv_bias = self.use_bias if self.qkv_bias is None else self.qkv_bias
        dense = lambda feats, name, axis=-1, std=0.02, bias=self.use_bias: nn.DenseGeneral(  # noqa: E731
            feats, axis=axis, use_bias=bias, dtype=self.dtype, name=name, kernel_init=nn.initializers.normal(std)
        )

        def qk_normed(x, name):
            return nn.RMSNorm(epsilon=self.norm_eps, dtype=self.dtype, name=name)(x) if self.qk_norm else x

        def keys_values(source_BxSxD):
            # Projections over tokens flattened to one axis, as in FeedForward: XLA:CPU then takes the kernel
            # gradients without first copying the activations transposed.
            Bs, S, Ds = source_BxSxD.shape
            source_MxD = source_BxSxD.reshape(Bs * S, Ds)
            return (
                hooks.hook(
                    self,
                    "k",
                    qk_normed(dense((K, Dh), "key", bias=qkv_bias)(source_MxD).reshape(Bs, S, K, Dh), "key_norm"),
                ),
                hooks.hook(self, "v", dense((K, Dh), "value", bias=qkv_bias)(source_MxD).reshape(Bs, S, K, Dh)),
            )

        fused = self.has_variable("params", "qkv")  # the serving layout's one projection (see fused_projections)
        if fused:
            qkv_NxCxDh = dense((H + 2 * K, Dh), "qkv", bias=qkv_bias)(x_BxTxD.reshape(B * T, D))
            q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh = (
                part.reshape(B, T, -1, Dh) for part in jnp.split(qkv_NxCxDh, (H, H + K), axis=1)
            )
            k_BxTxKxDh = hooks.hook(self, "k", qk_normed(k_BxTxKxDh, "key_norm"))
            v_BxTxKxDh = hooks.hook(self, "v", v_BxTxKxDh)
        else:
            q_BxTxHxDh = dense((H, Dh), "query", bias=qkv_bias)(x_BxTxD.reshape(B * T, D)).reshape(B, T, H, Dh)
        q_BxTxHxDh = hooks.hook(self, "q", qk_normed(q_BxTxHxDh, "query_norm"))
        if self.cross:
            if cache is None:
                if kv_BxSxD is None:
                    raise ValueError("cross-attention needs the encoder output (kv_BxSxD) or its cache")
                cache = KVCache.of(*keys_values(kv_BxSxD))
            keys = cache
        else:
            if not fused:
                k_BxTxKxDh, v_BxTxKxDh = keys_values(x_BxTxD)
            if self.rope_theta is not None:
                if rope_len_B is None:
                    rope_len_B = jnp.max(q_pos_BxT, axis=1) + 1
                inv_freq, factor = rope_frequencies(
                    Dh, self.rope_theta, self.rope_scaling, self.max_seq_len, rope_len_B
                )
                q_BxTxHxDh = hooks.hook(self, "rot_q", apply_rope(q_BxTxHxDh, q_pos_BxT, inv_freq, factor))
                k_BxTxKxDh = hooks.hook(
                    self, "rot_k", apply_rope(k_BxTxKxDh, k_pos_BxS if cache is None else q_pos_BxT, inv_freq, factor)
                )
            keys = KVCache.of(k_BxTxKxDh, v_BxTxKxDh)
        # With a self-attention cache, the queries attend over the cache as it was (its stale slots masked) and
        # the new keys, and the new keys are written afterwards: the write is then the cache's last use, and
        # XLA updates the donated buffer in place (read after the write, it copies the whole cache each step).
        cached = cache if cache is not None and not self.cross else None
        use_dropout = self.dropout > 0.0 and not deterministic
        hooked = hooks.any_active()
        if pattern is not None:  # a whole pass's memory-efficient attention (models.masks.self_attention_inputs)
            z_BxTxHxDh = pattern.attend(
                q_BxTxHxDh,
                keys.k_BxKxSxDh.astype(self.dtype),
                keys.v_BxKxSxDh.astype(self.dtype),
                None if self.attention_scale == "sqrt" else 1.0,
            )
        else:
            z_BxTxHxDh, _ = dot_product_attention(
                q_BxTxHxDh,
                keys.k_BxKxSxDh.astype(self.dtype),
                keys.v_BxKxSxDh.astype(self.dtype),
                mask,
                bias,
                dropout_rate=self.dropout if use_dropout else 0.0,
                dropout_rng=self.make_rng("dropout") if use_dropout else None,
                cached=cached,
                with_weights=hooked,
                hook=(lambda name, x: hooks.hook(self, name, x)) if hooked else None,
                scale=None if self.attention_scale == "sqrt" else 1.0,
            )
        if cached is not None:
            cache = cache.write(k_BxTxKxDh, v_BxTxKxDh, q_pos_BxT[:, 0])
        out = dense(D, "out", axis=(-2, -1), std=self.out_init_std)
        if hooks.active(self, "head_out") and self.has_variable("params", "out"):
            w_O = self.variables["params"]["out"]
            head_out_BxTxHxD = hooks.hook(
                self, "head_out", jnp.einsum("bthk,hkd->bthd", z_BxTxHxDh, w_O["kernel"].astype(self.dtype))
            )
            y_BxTxD = head_out_BxTxHxD.sum(axis=2)
            if "bias" in w_O:
                y_BxTxD = y_BxTxD + w_O["bias"].astype(self.dtype)
        else:
            y_BxTxD = out(z_BxTxHxDh.reshape(B * T, H, Dh)).reshape(B, T, D)
        return hooks.hook(self, "out", y_BxTxD), cache
