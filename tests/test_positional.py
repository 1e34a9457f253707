"""Tests for mulm_jax.nn.positional: sinusoidal, learned, RoPE (and its scalings) and ALiBi encodings."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulm_jax.config import RopeScaling
from mulm_jax.nn.positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_frequencies,
    sinusoidal_table,
)

HEAD_DIM = 16
SCALINGS = [
    None,
    RopeScaling(type="linear", factor=4.0),
    RopeScaling(type="ntk", factor=4.0),
    RopeScaling(type="yarn", factor=8.0, original_max_seq_len=64),
    RopeScaling(type="longrope", original_max_seq_len=64,
                long_factor=tuple(1.0 + i for i in range(HEAD_DIM // 2)),
                short_factor=tuple(1.0 + 0.1 * i for i in range(HEAD_DIM // 2))),
]


def _base_inv_freq(head_dim, theta=10000.0):
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


@pytest.mark.parametrize("d_model", [8, 7])
def test_sinusoidal_table_matches_paper_formula_double_loop(d_model):
    table = np.asarray(sinusoidal_table(12, d_model))
    expected = np.zeros((12, d_model))
    for pos in range(12):
        for i in range(0, d_model, 2):
            expected[pos, i] = math.sin(pos / 10000 ** (i / d_model))
            if i + 1 < d_model:
                expected[pos, i + 1] = math.cos(pos / 10000 ** (i / d_model))
    chex.assert_shape(table, (12, d_model))
    assert table.dtype == np.float32
    np.testing.assert_allclose(table, expected, atol=1e-6)
    np.testing.assert_array_equal(table[0], [0.0 if i % 2 == 0 else 1.0 for i in range(d_model)])


def test_learned_embedding_shapes_dtypes_and_param():
    module = LearnedPositionalEmbedding(max_len=32, d_model=8)
    pos_BxT = jnp.array([[0, 1, 2], [5, 6, 31]], dtype=jnp.int32)
    params = module.init(jax.random.PRNGKey(0), pos_BxT)
    embedding = params["params"]["embedding"]
    chex.assert_shape(embedding, (32, 8))
    chex.assert_type(embedding, jnp.float32)
    assert 0.01 < float(jnp.std(embedding)) < 0.03
    out = module.apply(params, pos_BxT)
    chex.assert_shape(out, (2, 3, 8))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_array_equal(out[1, 2], embedding[31])


def test_learned_embedding_bfloat16_output_keeps_float32_params():
    module = LearnedPositionalEmbedding(max_len=16, d_model=4, dtype=jnp.bfloat16)
    pos_BxT = jnp.zeros((1, 5), dtype=jnp.int32)
    params = module.init(jax.random.PRNGKey(0), pos_BxT)
    chex.assert_type(params["params"]["embedding"], jnp.float32)
    chex.assert_type(module.apply(params, pos_BxT), jnp.bfloat16)


def _rope_numpy(x, pos, inv_freq, attention_factor=1.0):
    B, T, H, Dh = x.shape
    F = Dh // 2
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(B):
        for t in range(T):
            for f in range(F):
                angle = pos[b, t] * inv_freq[f]
                c, s = math.cos(angle) * attention_factor, math.sin(angle) * attention_factor
                for h in range(H):
                    x1, x2 = x[b, t, h, f], x[b, t, h, f + F]
                    out[b, t, h, f] = x1 * c - x2 * s
                    out[b, t, h, f + F] = x2 * c + x1 * s
    return out


def test_apply_rope_matches_naive_numpy_rotate_half_with_per_sequence_positions():
    x = np.random.default_rng(0).normal(size=(2, 3, 2, HEAD_DIM)).astype(np.float32)
    pos = np.array([[0, 1, 2], [7, 8, 40]], dtype=np.int32)
    inv_freq, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    out = apply_rope(jnp.asarray(x), jnp.asarray(pos), inv_freq, 1.3)
    chex.assert_shape(out, x.shape)
    np.testing.assert_allclose(out, _rope_numpy(x, pos, np.asarray(inv_freq, np.float64), 1.3), atol=1e-5)


def test_apply_rope_at_position_zero_is_identity():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 3, HEAD_DIM)), jnp.float32)
    inv_freq, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    np.testing.assert_array_equal(apply_rope(x, jnp.zeros((2, 4), jnp.int32), inv_freq), x)


def test_apply_rope_preserves_norms():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 3, HEAD_DIM)), jnp.float32)
    pos = jnp.array([[0, 3, 9, 100, 2047], [1, 2, 3, 4, 5]], dtype=jnp.int32)
    inv_freq, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(x, pos, inv_freq), axis=-1),
                               jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_turns_each_pair_counterclockwise_by_position_times_frequency():
    # RoFormer: pair (x_j, x_{j+F}) read as the complex number x_j + i x_{j+F} is multiplied by e^{i p theta_j}.
    # At position 1 the first pair (theta_0 = 1) turns (1, 0) to (cos 1, sin 1) and (0, 1) to (-sin 1, cos 1).
    inv_freq, _ = rope_frequencies(2, 10000.0, None, 64)
    turned = apply_rope(jnp.eye(2, dtype=jnp.float32)[None, :, None, :], jnp.ones((1, 2), jnp.int32), inv_freq)
    np.testing.assert_allclose(turned[0, :, 0], [[math.cos(1), math.sin(1)], [-math.sin(1), math.cos(1)]],
                               atol=1e-6)
    x = np.random.default_rng(4).normal(size=(1, 3, 1, HEAD_DIM))
    pos = np.array([[2, 7, 30]])
    inv_freq, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    z = (x[..., :HEAD_DIM // 2] + 1j * x[..., HEAD_DIM // 2:]) * np.exp(1j * pos[..., None, None] * inv_freq)
    out = np.asarray(apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(pos), inv_freq))
    np.testing.assert_allclose(out, np.concatenate([z.real, z.imag], axis=-1), atol=1e-5)


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: "none" if s is None else s.type)
def test_rope_dot_product_depends_only_on_relative_offset(scaling):
    inv_freq, attention_factor = rope_frequencies(HEAD_DIM, 10000.0, scaling, 256)
    q, k = jnp.asarray(np.random.default_rng(3).normal(size=(2, 1, 1, 1, HEAD_DIM)), jnp.float32)

    def score(m, n):
        q_rot = apply_rope(q, jnp.array([[m]], jnp.int32), inv_freq, attention_factor)
        k_rot = apply_rope(k, jnp.array([[n]], jnp.int32), inv_freq, attention_factor)
        return float(jnp.sum(q_rot * k_rot))

    reference = score(9, 4)
    for c in (1, 17, 100, 300):
        assert score(9 + c, 4 + c) == pytest.approx(reference, rel=1e-3, abs=1e-3)


def test_apply_rope_keeps_bfloat16():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 3, 2, HEAD_DIM)), jnp.bfloat16)
    inv_freq, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    chex.assert_type(apply_rope(x, jnp.array([[0, 1, 2]], jnp.int32), inv_freq), jnp.bfloat16)


def test_rope_frequencies_plain_is_theta_power_law():
    inv_freq, attention_factor = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    chex.assert_shape(inv_freq, (HEAD_DIM // 2,))
    chex.assert_type(inv_freq, jnp.float32)
    np.testing.assert_allclose(inv_freq, _base_inv_freq(HEAD_DIM), rtol=1e-6)
    assert attention_factor == 1.0


def test_linear_scaling_divides_base_frequencies_by_factor_exactly():
    base, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    scaled, attention_factor = rope_frequencies(HEAD_DIM, 10000.0, RopeScaling(type="linear", factor=4.0), 64)
    np.testing.assert_array_equal(scaled, base / 4.0)
    assert attention_factor == 1.0


def test_ntk_scaling_equals_plain_rope_with_changed_base():
    factor = 4.0
    scaled, attention_factor = rope_frequencies(HEAD_DIM, 10000.0, RopeScaling(type="ntk", factor=factor), 64)
    new_base = 10000.0 * factor ** (HEAD_DIM / (HEAD_DIM - 2))
    plain, _ = rope_frequencies(HEAD_DIM, new_base, None, 64)
    np.testing.assert_allclose(scaled, plain, rtol=1e-6)
    assert attention_factor == 1.0


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    head_dim, factor = 64, 8.0
    scaling = RopeScaling(type="yarn", factor=factor, original_max_seq_len=2048)
    base, _ = rope_frequencies(head_dim, 10000.0, None, 2048)
    yarn, attention_factor = rope_frequencies(head_dim, 10000.0, scaling, 2048 * 8)
    # beta_fast=32 -> correction dim floor(8.07) = 8; beta_slow=1 -> ceil(20.1) = 21.
    np.testing.assert_array_equal(yarn[:9], base[:9])
    np.testing.assert_allclose(yarn[21:], base[21:] / factor, rtol=1e-6)
    ratio = np.asarray(base / yarn)
    assert np.all((ratio[9:21] > 1.0) & (ratio[9:21] < factor)) and np.all(np.diff(ratio) >= -1e-6)
    assert attention_factor == pytest.approx(0.1 * math.log(factor) + 1.0)


def test_yarn_original_length_zero_means_max_seq_len():
    explicit = rope_frequencies(HEAD_DIM, 10000.0, RopeScaling(type="yarn", factor=4.0, original_max_seq_len=512), 512)
    implicit = rope_frequencies(HEAD_DIM, 10000.0, RopeScaling(type="yarn", factor=4.0), 512)
    np.testing.assert_array_equal(explicit[0], implicit[0])
    assert explicit[1] == implicit[1]


def test_longrope_picks_long_or_short_factor_by_max_seq_len():
    long_factor, short_factor = (1.0, 2.0, 4.0, 8.0), (1.0, 1.0, 1.5, 2.0)
    scaling = RopeScaling(type="longrope", original_max_seq_len=1024,
                          long_factor=long_factor, short_factor=short_factor)
    base = _base_inv_freq(8)
    long_inv, long_attention = rope_frequencies(8, 10000.0, scaling, 4096)
    np.testing.assert_allclose(long_inv, base / np.array(long_factor), rtol=1e-6)
    assert long_attention == pytest.approx(math.sqrt(1 + math.log(4) / math.log(1024)))
    short_inv, short_attention = rope_frequencies(8, 10000.0, scaling, 1024)
    np.testing.assert_allclose(short_inv, base / np.array(short_factor), rtol=1e-6)
    assert short_attention == 1.0
    no_short = RopeScaling(type="longrope", original_max_seq_len=1024, long_factor=long_factor)
    np.testing.assert_allclose(rope_frequencies(8, 10000.0, no_short, 512)[0], base, rtol=1e-6)


def test_longrope_wrong_length_factor_lists_raise():
    with pytest.raises(ValueError, match=r"long_factor has 3 values; expected head_dim / 2 = 4"):
        rope_frequencies(8, 10000.0, RopeScaling(type="longrope", long_factor=(1.0, 2.0, 3.0)), 64)
    bad_short = RopeScaling(type="longrope", long_factor=(1.0,) * 4, short_factor=(1.0,) * 5)
    with pytest.raises(ValueError, match=r"short_factor has 5 values; expected head_dim / 2 = 4"):
        rope_frequencies(8, 10000.0, bad_short, 64)


def test_rope_frequencies_rejects_unknown_type_and_odd_head_dim():
    with pytest.raises(ValueError, match=r"unknown rope_scaling.type 'bogus'"):
        rope_frequencies(8, 10000.0, RopeScaling(type="bogus"), 64)
    with pytest.raises(ValueError, match=r"positive even head_dim, got 7"):
        rope_frequencies(7, 10000.0, None, 64)


def _official_get_slopes(n):
    # ofirpress/attention_with_linear_biases, fairseq/models/transformer.py
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + _official_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def test_alibi_slopes_powers_of_two():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -i for i in range(1, 9)], rtol=1e-7)
    np.testing.assert_allclose(alibi_slopes(4), [1 / 4, 1 / 16, 1 / 64, 1 / 256], rtol=1e-7)
    chex.assert_type(alibi_slopes(8), jnp.float32)


@pytest.mark.parametrize("num_heads", [1, 3, 6, 12, 20])
def test_alibi_slopes_non_power_of_two_match_official_recipe(num_heads):
    slopes = alibi_slopes(num_heads)
    chex.assert_shape(slopes, (num_heads,))
    np.testing.assert_allclose(slopes, _official_get_slopes(num_heads), rtol=1e-6)


def test_alibi_bias_causal_and_bidirectional_values():
    slopes = jnp.array([0.5, 0.25], jnp.float32)
    pos = jnp.array([[0, 1, 2]], jnp.int32)
    causal = alibi_bias(slopes, pos, pos, causal=True)
    chex.assert_shape(causal, (1, 2, 3, 3))
    chex.assert_type(causal, jnp.float32)
    lower = np.array([[0, 0, 0], [1, 0, 0], [2, 1, 0]], np.float32)
    np.testing.assert_array_equal(causal[0, 0], -0.5 * lower)
    np.testing.assert_array_equal(causal[0, 1], -0.25 * lower)
    both = alibi_bias(slopes, pos, pos, causal=False)
    np.testing.assert_array_equal(both[0, 0], -0.5 * np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], np.float32))


def test_alibi_bias_decoding_step_uses_each_sequence_offset():
    slopes = jnp.array([0.5], jnp.float32)
    q_pos_BxT = jnp.array([[3], [1]], jnp.int32)
    k_pos_BxS = jnp.tile(jnp.arange(4, dtype=jnp.int32), (2, 1))
    bias = alibi_bias(slopes, q_pos_BxT, k_pos_BxS, causal=True)
    chex.assert_shape(bias, (2, 1, 1, 4))
    np.testing.assert_array_equal(bias[0, 0, 0], [-1.5, -1.0, -0.5, 0.0])
    np.testing.assert_array_equal(bias[1, 0, 0], [-0.5, 0.0, 0.0, 0.0])
