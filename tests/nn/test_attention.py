"""Attention core, GQA/MQA projections, masks and the KV cache, against naive numpy references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulm_jax.nn import attention as attention_lib
from mulm_jax.models.masks import cached_key_positions
from mulm_jax.nn.attention import Attention, KVCache, attention_mask
from mulm_jax.nn.hooks import ACTIVATIONS, hooks, sown


@jax.jit
def dot_product_attention(q, k_BxSxKxDh, v_BxSxKxDh, mask=None):
    """The core with keys and values laid out position-major, as the naive reference takes them."""
    return attention_lib.dot_product_attention(
        q, k_BxSxKxDh.transpose(0, 2, 1, 3), v_BxSxKxDh.transpose(0, 2, 1, 3), mask
    )


def naive_attention(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask_BxTxS=None):
    """Plain multi-head attention, one head and one query at a time."""
    q, k, v = (np.asarray(a, np.float64) for a in (q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh))
    B, T, H, Dh = q.shape
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                scores = k[b, :, h] @ q[b, t, h] / np.sqrt(Dh)
                if mask_BxTxS is not None:
                    scores = np.where(mask_BxTxS[b, t], scores, -np.inf)
                w = np.exp(scores - scores.max())
                out[b, t, h] = (w / w.sum()) @ v[b, :, h]
    return out


def random_qkv(B=2, T=5, S=7, H=4, K=4, Dh=8, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, T, H, Dh)),
        jax.random.normal(kk, (B, S, K, Dh)),
        jax.random.normal(kv, (B, S, K, Dh)),
    )


def test_core_with_equal_heads_matches_naive_multi_head_attention():
    q, k, v = random_qkv()
    mask_BxTxS = np.random.default_rng(0).random((2, 5, 7)) > 0.3
    mask_BxTxS[..., 0] = True
    out, probs = dot_product_attention(q, k, v, jnp.asarray(mask_BxTxS)[:, None])
    chex.assert_shape(out, (2, 5, 4, 8))
    chex.assert_shape(probs, (2, 4, 5, 7))
    np.testing.assert_allclose(out, naive_attention(q, k, v, mask_BxTxS), atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_grouped_query_equals_multi_head_with_repeated_kv_heads():
    q, k, v = random_qkv(H=6, K=2)
    out, _ = dot_product_attention(q, k, v)
    k_rep, v_rep = jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2)  # query head h uses kv head h // 3
    np.testing.assert_allclose(out, naive_attention(q, k_rep, v_rep), atol=1e-5)


def test_gqa_with_one_kv_head_equals_mqa_sharing_one_head():
    q, k, v = random_qkv(H=4, K=1)
    out, _ = dot_product_attention(q, k, v)
    np.testing.assert_allclose(out, naive_attention(q, jnp.tile(k, (1, 1, 4, 1)), jnp.tile(v, (1, 1, 4, 1))), atol=1e-5)


def test_core_rejects_heads_not_divisible_by_kv_heads():
    q, k, v = random_qkv(H=4, K=3)
    with pytest.raises(ValueError, match="4 query heads cannot be shared evenly among 3 kv heads"):
        attention_lib.dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))


def test_core_over_a_cache_and_new_keys_equals_the_keys_in_one_piece():
    q, k, v = random_qkv(T=3, S=7, H=6, K=2)
    mask_BxTxS = jnp.asarray(np.random.default_rng(1).random((2, 3, 7)) > 0.3).at[..., 0].set(True)[:, None]
    heads_major = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    whole, probs = attention_lib.dot_product_attention(q, heads_major(k), heads_major(v), mask_BxTxS)
    cached = KVCache.of(k[:, :4], v[:, :4])
    split, split_probs = attention_lib.dot_product_attention(
        q, heads_major(k[:, 4:]), heads_major(v[:, 4:]), mask_BxTxS, cached=cached
    )
    np.testing.assert_allclose(split, whole, atol=1e-5)
    np.testing.assert_allclose(split_probs, probs, atol=1e-6)


def positions(n, b=1):
    return jnp.broadcast_to(jnp.arange(n), (b, n))


def test_causal_mask_is_lower_triangular():
    mask = attention_mask(positions(4), positions(4), causal=True)
    chex.assert_shape(mask, (1, 1, 4, 4))
    np.testing.assert_array_equal(mask[0, 0], np.tril(np.ones((4, 4), bool)))


def test_sliding_window_mask_keeps_the_last_w_keys():
    mask = attention_mask(positions(6), positions(6), causal=True, window=3)[0, 0]
    expected = np.array([[0 <= i - j < 3 for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(mask, expected)
    bidirectional = attention_mask(positions(6), positions(6), causal=False, window=2)[0, 0]
    np.testing.assert_array_equal(bidirectional, np.abs(np.subtract.outer(range(6), range(6))) < 2)


def test_block_sparse_mask_is_local_blocks_plus_global_tokens():
    mask = attention_mask(positions(8), positions(8), causal=False, block_size=3, num_global=1)[0, 0]
    expected = np.zeros((8, 8), bool)
    for i in range(8):
        for j in range(8):
            expected[i, j] = i // 3 == j // 3 or i == 0 or j == 0
    np.testing.assert_array_equal(mask, expected)
    causal = attention_mask(positions(8), positions(8), causal=True, block_size=3, num_global=1)[0, 0]
    np.testing.assert_array_equal(causal, expected & np.tril(np.ones((8, 8), bool)))
    local = attention_mask(positions(8), positions(8), causal=False, block_size=3)[0, 0]  # no global tokens
    np.testing.assert_array_equal(local, np.equal.outer(np.arange(8) // 3, np.arange(8) // 3))


def test_a_mask_without_constraints_lets_every_query_see_every_key():
    mask = attention_mask(positions(3, 2), positions(5, 2), causal=False)
    chex.assert_shape(mask, (2, 1, 3, 5))
    assert mask.dtype == bool and bool(mask.all())


def test_padding_keys_are_masked_for_every_query():
    valid = jnp.array([[True, True, False, False]])
    mask = attention_mask(positions(4), positions(4), causal=False, k_valid_BxS=valid)[0, 0]
    np.testing.assert_array_equal(mask, np.array([[1, 1, 0, 0]] * 4, bool))


def test_cache_write_puts_each_sequence_at_its_own_position():
    cache = KVCache.zeros(batch=2, max_len=6, num_kv_heads=1, head_dim=2)
    new = jnp.ones((2, 2, 1, 2)) * jnp.array([1.0, 2.0])[:, None, None, None]
    cache = cache.write(new, -new, jnp.array([0, 3]))
    chex.assert_shape(cache.k_BxKxSxDh, (2, 1, 6, 2))
    np.testing.assert_array_equal(cache.k_BxKxSxDh[0, 0, :, 0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(cache.k_BxKxSxDh[1, 0, :, 0], [0, 0, 0, 2, 2, 0])
    np.testing.assert_array_equal(cache.v_BxKxSxDh[1, 0, :, 0], [0, 0, 0, -2, -2, 0])


def make_attention(**kw):
    args = dict(num_heads=4, num_kv_heads=2, head_dim=4)
    args.update(kw)
    return Attention(**args)


def test_attention_module_shapes_and_kv_projection_sizes():
    attn = make_attention()
    x = jax.random.normal(jax.random.key(0), (2, 5, 12))
    params = attn.init(jax.random.key(1), x, q_pos_BxT=positions(5, 2), k_pos_BxS=positions(5, 2))
    chex.assert_shape(params["params"]["query"]["kernel"], (12, 4, 4))
    chex.assert_shape(params["params"]["key"]["kernel"], (12, 2, 4))  # only the kv heads are projected
    chex.assert_shape(params["params"]["out"]["kernel"], (4, 4, 12))
    y, cache = jax.jit(attn.apply)(params, x, q_pos_BxT=positions(5, 2), k_pos_BxS=positions(5, 2))
    chex.assert_shape(y, (2, 5, 12))
    assert cache is None


def test_qk_norm_rms_normalises_each_heads_queries_and_keys_before_the_dot_product():
    attn = make_attention(num_kv_heads=4, use_bias=False, qk_norm=True, norm_eps=1e-6)
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 12))
    pos = positions(5, 2)
    params = attn.init(jax.random.key(1), x, q_pos_BxT=pos, k_pos_BxS=pos)
    p = jax.tree.map(np.asarray, params["params"])
    chex.assert_shape([p["query_norm"]["scale"], p["key_norm"]["scale"]], (4,))  # a scale per head dimension
    p["query_norm"]["scale"], p["key_norm"]["scale"] = np.linspace(0.5, 2.0, 4), np.linspace(2.0, 1.0, 4)
    y, _ = jax.jit(attn.apply)(
        {"params": p}, x, q_pos_BxT=pos, mask=attention_mask(pos, pos, causal=True), k_pos_BxS=pos
    )
    xs = np.asarray(x, np.float64)
    rms = lambda a, scale: a / np.sqrt(np.mean(a**2, -1, keepdims=True) + 1e-6) * scale  # noqa: E731
    q = rms(np.einsum("btd,dhk->bthk", xs, p["query"]["kernel"]), p["query_norm"]["scale"])
    k = rms(np.einsum("btd,dhk->bthk", xs, p["key"]["kernel"]), p["key_norm"]["scale"])
    v = np.einsum("btd,dhk->bthk", xs, p["value"]["kernel"])
    out = naive_attention(q, k, v, np.tril(np.ones((5, 5), bool))[None].repeat(2, 0))
    np.testing.assert_allclose(y, np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]), atol=1e-4)


def test_cross_attention_reads_keys_from_the_memory():
    attn = make_attention(cross=True)
    x, memory = jnp.ones((1, 3, 12)), jax.random.normal(jax.random.key(0), (1, 7, 12))
    params = attn.init(jax.random.key(1), x, memory)
    apply = jax.jit(attn.apply)
    y1, _ = apply(params, x, memory)
    y2, _ = apply(params, x, memory.at[:, 6].set(5.0))
    chex.assert_shape(y1, (1, 3, 12))
    assert not np.allclose(y1, y2)


def test_attention_sows_its_pattern_at_its_hook_point_and_an_edit_replaces_it():
    attn = make_attention()
    x = jax.random.normal(jax.random.key(0), (1, 5, 12))
    pos = positions(5)
    mask = attention_mask(pos, pos, causal=True)
    params = attn.init(jax.random.key(1), x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)
    plain, _ = attn.apply(params, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)
    with hooks(keep={"pattern"}):
        (y, _), state = attn.apply(params, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos, mutable=[ACTIVATIONS])
    weights = sown(state[ACTIVATIONS])["pattern"]
    chex.assert_shape(weights, (1, 4, 5, 5))
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(weights[0, 0]) > 0, np.tril(np.ones((5, 5), bool)))
    np.testing.assert_array_equal(y, plain)  # caching changes nothing
    uniform = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]
    with hooks(edits={"pattern": lambda p: jnp.broadcast_to(jnp.asarray(uniform, p.dtype), p.shape)}):
        (edited, _), _ = attn.apply(params, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos, mutable=[ACTIVATIONS])
    assert not np.allclose(edited, plain)
    with hooks(keep={"v"}):
        _, state = attn.apply(params, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos, mutable=[ACTIVATIONS])
    v_TxHxDh = np.repeat(np.asarray(sown(state[ACTIVATIONS])["v"])[0], 2, axis=1)  # 2 query heads per kv head
    w_out = np.asarray(params["params"]["out"]["kernel"])
    expected = np.einsum("tk,khd,hdD->tD", uniform, v_TxHxDh, w_out) + np.asarray(params["params"]["out"]["bias"])
    np.testing.assert_allclose(edited[0], expected, atol=1e-5)


def test_unscaled_attention_weights_are_the_softmax_of_plain_q_dot_k_and_the_default_divides_by_sqrt_dh():
    x = 2.0 * jax.random.normal(jax.random.key(0), (1, 5, 12))
    pos = positions(5)
    mask = attention_mask(pos, pos, causal=True)
    params = make_attention().init(jax.random.key(1), x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)

    def sown_qkp(attention_scale):
        with hooks(keep={"q", "k", "pattern"}):
            _, state = make_attention(attention_scale=attention_scale).apply(
                params, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos, mutable=[ACTIVATIONS]
            )
        got = sown(state[ACTIVATIONS])
        return tuple(np.asarray(got[n][0], np.float64) for n in ("q", "k", "pattern"))

    for attention_scale, scale in (("none", 1.0), ("sqrt", 4**-0.5)):
        q_TxHxDh, k_TxKxDh, pattern_HxTxT = sown_qkp(attention_scale)
        scores_HxTxT = np.einsum("thd,shd->hts", q_TxHxDh, np.repeat(k_TxKxDh, 2, axis=1)) * scale
        scores_HxTxT = np.where(np.tril(np.ones((5, 5), bool)), scores_HxTxT, -np.inf)
        weights_HxTxT = np.exp(scores_HxTxT - scores_HxTxT.max(-1, keepdims=True))
        np.testing.assert_allclose(pattern_HxTxT, weights_HxTxT / weights_HxTxT.sum(-1, keepdims=True), atol=1e-5)
    assert not np.allclose(pattern_HxTxT, sown_qkp("none")[2], atol=1e-2)  # the scale matters at these sizes


def test_attention_dropout_is_random_in_training_and_off_in_evaluation():
    attn = make_attention(dropout=0.5)
    x = jax.random.normal(jax.random.key(0), (1, 5, 12))
    pos = positions(5)
    params = attn.init(jax.random.key(1), x, q_pos_BxT=pos, k_pos_BxS=pos)
    apply = jax.jit(attn.apply, static_argnames="deterministic")

    def run(seed, det):
        return apply(
            params, x, q_pos_BxT=pos, k_pos_BxS=pos, deterministic=det, rngs={"dropout": jax.random.key(seed)}
        )[0]

    np.testing.assert_array_equal(run(0, True), run(1, True))
    assert not np.allclose(run(0, False), run(1, False))
    np.testing.assert_array_equal(run(2, False), run(2, False))


def test_cached_attention_step_by_step_equals_full_causal_attention():
    attn = make_attention(rope_theta=10000.0, max_seq_len=8)
    x = jax.random.normal(jax.random.key(0), (2, 6, 12))
    pos = positions(6, 2)
    full_mask = attention_mask(pos, pos, causal=True)
    params = attn.init(jax.random.key(1), x, mask=full_mask, q_pos_BxT=pos, k_pos_BxS=pos)
    full, _ = jax.jit(attn.apply)(params, x, mask=full_mask, q_pos_BxT=pos, k_pos_BxS=pos)
    cache = KVCache.zeros(2, 8, 2, 4)

    @jax.jit
    def step(x_t, q_pos, cache):
        k_pos, k_valid = cached_key_positions(q_pos, cache.max_len)
        mask = attention_mask(q_pos, k_pos, causal=True, k_valid_BxS=k_valid)
        return attn.apply(params, x_t, mask=mask, q_pos_BxT=q_pos, cache=cache)

    outs = []
    for t in range(6):
        y, cache = step(x[:, t : t + 1], pos[:, t : t + 1], cache)
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


@pytest.mark.parametrize(
    "heads,kv_heads,window,alibi,T",
    [
        (4, 4, None, False, 1),
        (4, 2, None, True, 1),
        (4, 1, 40, False, 1),
        (2, 2, None, False, 2),
        (2, 2, None, False, 3),
    ],
    ids=["mha", "gqa-alibi", "mqa-window", "two-new", "three-new"],
)
def test_attention_over_a_long_cache_reads_only_the_chunks_a_query_may_see(heads, kv_heads, window, alibi, T):
    # A 384-slot cache is three chunks; the queries sit at 200 and 180 (the second chunk), so the third chunk
    # (and with a window of 40, the first) is never read: filled with NaN there, it must not reach the output.
    from mulm_jax.nn.positional import alibi_bias, alibi_slopes

    B, S, Dh = 2, 3 * attention_lib.CACHE_CHUNK, 8
    q, k_new, v_new = random_qkv(B=B, T=T, S=T, H=heads, K=kv_heads, Dh=Dh, seed=1)
    _, k_old, v_old = random_qkv(B=B, T=1, S=S, H=heads, K=kv_heads, Dh=Dh, seed=2)
    q_pos_BxT = jnp.asarray([[200 + t for t in range(T)], [180 + t for t in range(T)]], jnp.int32)
    k_pos_BxS, k_valid_BxS = cached_key_positions(q_pos_BxT, S)
    mask = attention_mask(q_pos_BxT, k_pos_BxS, causal=True, window=window, k_valid_BxS=k_valid_BxS)
    bias = alibi_bias(alibi_slopes(heads), q_pos_BxT, k_pos_BxS, causal=True) if alibi else None
    clean = KVCache.of(k_old, v_old)
    unseen_S = np.arange(S) >= 2 * attention_lib.CACHE_CHUNK
    if window is not None:
        unseen_S |= np.arange(S) < attention_lib.CACHE_CHUNK
    poisoned = KVCache(
        jnp.where(unseen_S[:, None], jnp.nan, clean.k_BxKxSxDh), jnp.where(unseen_S[:, None], jnp.nan, clean.v_BxKxSxDh)
    )
    kv_new = (k_new.transpose(0, 2, 1, 3), v_new.transpose(0, 2, 1, 3))
    full = jax.jit(lambda cache: attention_lib.dot_product_attention(q, *kv_new, mask, bias, cached=cache))
    chunked = jax.jit(
        lambda cache: attention_lib.dot_product_attention(q, *kv_new, mask, bias, cached=cache, with_weights=False)
    )
    expected, _ = full(clean)
    out, weights = chunked(poisoned)
    assert weights is None
    chex.assert_tree_all_finite(out)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.isnan(full(poisoned)[0]).any()  # the whole-cache softmax does read those slots


def test_attention_over_a_cache_nobody_may_see_yet_reads_none_of_it():
    # A prefill's fresh cache: every slot is at or past the queries' first position.
    q, k_new, v_new = random_qkv(B=1, T=4, S=4, seed=3)
    q_pos_1xT = jnp.arange(4, dtype=jnp.int32)[None]
    k_pos, k_valid = cached_key_positions(q_pos_1xT, 2 * attention_lib.CACHE_CHUNK)
    mask = attention_mask(q_pos_1xT, k_pos, causal=True, k_valid_BxS=k_valid)
    nan_cache = KVCache.zeros(1, 2 * attention_lib.CACHE_CHUNK, 4, 8)
    nan_cache = KVCache(nan_cache.k_BxKxSxDh + jnp.nan, nan_cache.v_BxKxSxDh + jnp.nan)
    out, _ = attention_lib.dot_product_attention(
        q, k_new.transpose(0, 2, 1, 3), v_new.transpose(0, 2, 1, 3), mask, cached=nan_cache, with_weights=False
    )
    causal = np.tril(np.ones((4, 4), bool))[None]
    np.testing.assert_allclose(out, naive_attention(q, k_new, v_new, causal), atol=1e-5)


def test_attention_over_a_cache_without_a_mask_reads_every_slot():
    # No mask: every cache slot and every new key is seen, in each chunk of the loop.
    q, k_new, v_new = random_qkv(B=2, T=2, S=2, H=4, K=2, seed=4)
    _, k_old, v_old = random_qkv(B=2, T=1, S=2 * attention_lib.CACHE_CHUNK, H=4, K=2, seed=5)
    cache = KVCache.of(k_old, v_old)
    kv_new = (k_new.transpose(0, 2, 1, 3), v_new.transpose(0, 2, 1, 3))
    chunked, _ = attention_lib.dot_product_attention(q, *kv_new, cached=cache, with_weights=False)
    whole = naive_attention(
        q,
        jnp.repeat(jnp.concatenate([k_old, k_new], 1), 2, axis=2),
        jnp.repeat(jnp.concatenate([v_old, v_new], 1), 2, axis=2),
    )
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_a_bfloat16_cache_holds_what_is_written_in_bfloat16():
    cache = KVCache.zeros(batch=1, max_len=4, num_kv_heads=2, head_dim=3, dtype=jnp.bfloat16)
    chex.assert_type([cache.k_BxKxSxDh, cache.v_BxKxSxDh], jnp.bfloat16)
    k, v = (jax.random.normal(jax.random.key(i), (1, 2, 2, 3)) for i in (0, 1))  # float32, two positions
    cache = cache.write(k, v, jnp.array([1]))
    chex.assert_type([cache.k_BxKxSxDh, cache.v_BxKxSxDh], jnp.bfloat16)
    np.testing.assert_array_equal(cache.k_BxKxSxDh[0, :, 1:3], k[0].transpose(1, 0, 2).astype(jnp.bfloat16))
    np.testing.assert_array_equal(cache.v_BxKxSxDh[0, :, 1:3], v[0].transpose(1, 0, 2).astype(jnp.bfloat16))


@pytest.mark.parametrize("length", [2, 5, 8])  # fewer positions than the window, more, the whole cache
def test_a_cache_turned_into_a_ring_holds_the_newest_window_of_positions(length):
    # Slot s of a ring of W slots holds the newest position p < length with p % W == s.
    W, S = 3, 8
    values = jnp.broadcast_to(jnp.arange(S, dtype=jnp.float32)[None, None, :, None], (1, 1, S, 2))
    ring = KVCache(values, -values).as_ring(jnp.array([length]), W)
    assert ring.ring and ring.max_len == W
    for slot in range(W):
        held = [p for p in range(length) if p % W == slot]
        if held:
            assert float(ring.k_BxKxSxDh[0, 0, slot, 0]) == held[-1] == -float(ring.v_BxKxSxDh[0, 0, slot, 1])


def test_fused_qkv_params_in_the_order_the_module_declares_compute_the_same_attention():
    # The serving layout (infer.layout) concatenates the projections as fused_projections() names them.
    attn = make_attention()
    x = jax.random.normal(jax.random.key(0), (2, 5, 12))
    pos = positions(5, 2)
    mask = attention_mask(pos, pos, causal=True)
    params = attn.init(jax.random.key(1), x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)["params"]
    ((fused_name, parts),) = attn.fused_projections().items()
    fused = {name: p for name, p in params.items() if name not in parts}
    fused[fused_name] = {
        "kernel": jnp.concatenate([params[n]["kernel"] for n in parts], axis=1),
        "bias": jnp.concatenate([params[n]["bias"] for n in parts], axis=0),
    }
    apply = jax.jit(attn.apply)
    expected, _ = apply({"params": params}, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)
    np.testing.assert_allclose(
        apply({"params": fused}, x, mask=mask, q_pos_BxT=pos, k_pos_BxS=pos)[0], expected, atol=1e-5
    )
    assert make_attention(cross=True).fused_projections() == {}  # its keys and values come from another input


def test_a_bias_is_added_to_the_scaled_scores_before_the_softmax():
    q, k, v = random_qkv(B=1, T=3, S=4, H=2, K=2, seed=6)
    bias_BxHxTxS = jax.random.normal(jax.random.key(7), (1, 2, 3, 4))
    out, probs = attention_lib.dot_product_attention(
        q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), bias=bias_BxHxTxS
    )
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(8) + np.asarray(bias_BxHxTxS)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(out, np.einsum("bhts,bshd->bthd", expected, v), atol=1e-5)


def test_attention_dropout_zeroes_weights_and_scales_the_kept_ones_up_by_one_over_the_keep_rate():
    # With value vectors one-hot per key, each output row is the dropped-out weights themselves.
    B, T, S, H, rate = 1, 4, 6, 2, 0.25
    q, k, _ = random_qkv(B=B, T=T, S=S, H=H, K=H, Dh=S, seed=8)
    one_hot = jnp.broadcast_to(jnp.eye(S)[None, None], (B, H, S, S))
    out, probs = attention_lib.dot_product_attention(
        q, k.transpose(0, 2, 1, 3), one_hot, dropout_rate=rate, dropout_rng=jax.random.key(9)
    )
    used = np.asarray(out).transpose(0, 2, 1, 3)  # [B, H, T, S]
    kept = used != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(used[kept], np.asarray(probs)[kept] / (1 - rate), rtol=1e-5)
