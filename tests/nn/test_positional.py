"""Tests for mulm_jax.nn.positional: sinusoidal, learned, RoPE (and its scalings) and ALiBi encodings."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers  # pinned in requirements-test.txt: the reference for RoPE's scalings
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

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
    RopeScaling(
        type="longrope",
        original_max_seq_len=64,
        long_factor=tuple(1.0 + i for i in range(HEAD_DIM // 2)),
        short_factor=tuple(1.0 + 0.1 * i for i in range(HEAD_DIM // 2)),
    ),
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
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(x, pos, inv_freq), axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_rope_turns_each_pair_counterclockwise_by_position_times_frequency():
    # RoFormer: pair (x_j, x_{j+F}) read as the complex number x_j + i x_{j+F} is multiplied by e^{i p theta_j}.
    # At position 1 the first pair (theta_0 = 1) turns (1, 0) to (cos 1, sin 1) and (0, 1) to (-sin 1, cos 1).
    inv_freq, _ = rope_frequencies(2, 10000.0, None, 64)
    turned = apply_rope(jnp.eye(2, dtype=jnp.float32)[None, :, None, :], jnp.ones((1, 2), jnp.int32), inv_freq)
    np.testing.assert_allclose(turned[0, :, 0], [[math.cos(1), math.sin(1)], [-math.sin(1), math.cos(1)]], atol=1e-6)
    x = np.random.default_rng(4).normal(size=(1, 3, 1, HEAD_DIM))
    pos = np.array([[2, 7, 30]])
    inv_freq, _ = rope_frequencies(HEAD_DIM, 10000.0, None, 64)
    z = (x[..., : HEAD_DIM // 2] + 1j * x[..., HEAD_DIM // 2 :]) * np.exp(1j * pos[..., None, None] * inv_freq)
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
    scaling = RopeScaling(
        type="longrope", original_max_seq_len=1024, long_factor=long_factor, short_factor=short_factor
    )
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


def hf_rope(kind: str, head_dim: int, theta: float, max_positions: int, seq_len: int | None = None, **parameters):
    """transformers' (inv_freq, attention_factor) for RoPE type `kind` (its ROPE_INIT_FUNCTIONS, what HF models
    rotate by), for one head of `head_dim`; seq_len: the length a dynamic or longrope model has reached."""
    config = transformers.LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": kind, "rope_theta": theta, **parameters},
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len)
    return inv_freq.numpy(), attention_factor


@pytest.mark.parametrize(
    "theta,original,factor,betas,truncate,attention_factor",
    [
        (10000.0, 64, 8.0, (32.0, 1.0), True, 0.0),  # the fast end's correction dim < 0: clamped to 0
        (10000.0, 2048, 4.0, (32.0, 1.0), False, 0.0),  # a ramp between fractional dims
        (10.0, 2048, 1.5, (64.0, 1.0), True, 0.0),  # the slow end (dim 21) clamped to head_dim - 1
        (10000.0, 512, 4.0, (4.0, 4.0), False, 0.0),  # both ends at one dim: the ramp's width is 0.001
        (10000.0, 512, 1.0, (32.0, 1.0), True, 0.0),  # factor 1: no attention scaling
        (10000.0, 512, 0.5, (32.0, 1.0), True, 0.0),  # factor < 1 (a shrink): no attention scaling either
        (10000.0, 512, 4.0, (32.0, 1.0), True, 1.25),  # an attention factor given
    ],
)
def test_yarn_equals_transformers(theta, original, factor, betas, truncate, attention_factor):
    scaling = RopeScaling(
        type="yarn",
        factor=factor,
        original_max_seq_len=original,
        beta_fast=betas[0],
        beta_slow=betas[1],
        truncate=truncate,
        attention_factor=attention_factor,
    )
    ours, our_factor = rope_frequencies(HEAD_DIM, theta, scaling, original * 4)
    hf, hf_factor = hf_rope(
        "yarn",
        HEAD_DIM,
        theta,
        original * 4,
        factor=factor,
        beta_fast=betas[0],
        beta_slow=betas[1],
        truncate=truncate,
        original_max_position_embeddings=original,
        **({"attention_factor": attention_factor} if attention_factor else {}),
    )
    np.testing.assert_allclose(ours, hf, rtol=1e-6)
    assert our_factor == pytest.approx(hf_factor, rel=1e-9)


@pytest.mark.parametrize(
    "theta,original,factor,low,high",
    [
        (10000.0, 64, 8.0, 1.0, 4.0),  # head_dim 16: one frequency kept, two smoothed, five divided by 8
        (500000.0, 8192, 8.0, 1.0, 4.0),  # Llama 3.1's own settings
        (10000.0, 256, 4.0, 2.0, 8.0),
    ],
)
def test_llama3_scaling_equals_transformers(theta, original, factor, low, high):
    scaling = RopeScaling(
        type="llama3", factor=factor, original_max_seq_len=original, low_freq_factor=low, high_freq_factor=high
    )
    ours, our_factor = rope_frequencies(HEAD_DIM, theta, scaling, original * 4)
    hf, hf_factor = hf_rope(
        "llama3",
        HEAD_DIM,
        theta,
        original * 4,
        factor=factor,
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=original,
    )
    np.testing.assert_allclose(ours, hf, rtol=1e-6)
    assert our_factor == hf_factor == 1.0
    base = _base_inv_freq(HEAD_DIM, theta)
    kept = 2 * np.pi / base < original / high  # short wavelengths
    np.testing.assert_allclose(ours[kept], base[kept], rtol=1e-6)
    assert np.all(ours[~kept] < base[~kept] * (1 - 1e-3))


def test_dynamic_ntk_stretches_each_sequence_by_its_own_length_as_transformers_does():
    scaling = RopeScaling(type="dynamic", factor=4.0, original_max_seq_len=64)
    reached = [10, 64, 65, 200]
    ours, our_factor = rope_frequencies(HEAD_DIM, 10000.0, scaling, 256, jnp.asarray(reached, jnp.int32))
    chex.assert_shape(ours, (4, HEAD_DIM // 2))
    chex.assert_type(ours, jnp.float32)
    for row, length in zip(np.asarray(ours), reached):
        hf, hf_factor = hf_rope("dynamic", HEAD_DIM, 10000.0, 64, seq_len=length, factor=4.0)
        np.testing.assert_allclose(row, hf, rtol=1e-6, err_msg=f"length {length}")
        assert our_factor == hf_factor == 1.0
    np.testing.assert_allclose(ours[0], _base_inv_freq(HEAD_DIM), rtol=1e-6)  # within the original: unstretched
    assert np.all(np.asarray(ours[3]) <= np.asarray(ours[2])) and np.any(ours[3] < ours[2])
    # Without lengths (a model's frequencies before any sequence): the unstretched ones.
    unstretched, factor = rope_frequencies(HEAD_DIM, 10000.0, scaling, 256)
    np.testing.assert_allclose(unstretched, _base_inv_freq(HEAD_DIM), rtol=1e-6)
    assert factor == 1.0


@pytest.mark.parametrize("max_seq_len", [256, 96, 64, 32])  # stretch 4, 1.5, 1 (none), 0.5 (a shrink)
def test_longrope_equals_transformers_for_each_sequence_length(max_seq_len):
    long_factor = tuple(1.0 + i for i in range(HEAD_DIM // 2))
    short_factor = tuple(1.0 + 0.1 * i for i in range(HEAD_DIM // 2))
    scaling = RopeScaling(type="longrope", original_max_seq_len=64, long_factor=long_factor, short_factor=short_factor)
    parameters = dict(
        long_factor=list(long_factor), short_factor=list(short_factor), original_max_position_embeddings=64
    )
    reached = [10, 64, 65, 200]  # up to the original length: the short factors; past it: the long ones
    ours, our_factor = rope_frequencies(HEAD_DIM, 10000.0, scaling, max_seq_len, jnp.asarray(reached, jnp.int32))
    chex.assert_shape(ours, (4, HEAD_DIM // 2))
    for row, length in zip(np.asarray(ours), reached):
        hf, hf_factor = hf_rope("longrope", HEAD_DIM, 10000.0, max_seq_len, seq_len=length, **parameters)
        np.testing.assert_allclose(row, hf, rtol=1e-6, err_msg=f"length {length}")
        assert our_factor == pytest.approx(hf_factor, rel=1e-9)
    whole, _ = rope_frequencies(HEAD_DIM, 10000.0, scaling, max_seq_len)  # no lengths: chosen by max_seq_len
    np.testing.assert_allclose(
        whole, hf_rope("longrope", HEAD_DIM, 10000.0, max_seq_len, seq_len=max_seq_len, **parameters)[0], rtol=1e-6
    )


def test_smallest_legal_sizes_work_and_the_first_illegal_ones_raise():
    chex.assert_shape(sinusoidal_table(0, 4), (0, 4))
    np.testing.assert_allclose(sinusoidal_table(3, 1), [[0.0], [math.sin(1.0)], [math.sin(2.0)]], atol=1e-7)
    for positions, width in ((5, 0), (-1, 4)):
        with pytest.raises(ValueError, match=rf"num_positions >= 0 and d_model > 0, got {positions} and {width}"):
            sinusoidal_table(positions, width)
    np.testing.assert_allclose(rope_frequencies(2, 10000.0, None, 8)[0], [1.0])
    with pytest.raises(ValueError, match=r"positive even head_dim, got 0"):
        rope_frequencies(0, 10000.0, None, 64)
    for kind in ("ntk", "dynamic"):  # base ** (d / (d - 2)) needs d > 2
        chex.assert_shape(rope_frequencies(4, 10000.0, RopeScaling(type=kind, factor=2.0), 8)[0], (2,))
        with pytest.raises(ValueError, match=rf"{kind} RoPE scaling needs head_dim > 2, got 2"):
            rope_frequencies(2, 10000.0, RopeScaling(type=kind, factor=2.0), 8)
    np.testing.assert_allclose(alibi_slopes(1), [2.0**-8])
    with pytest.raises(ValueError, match=r"alibi_slopes needs num_heads > 0, got 0"):
        alibi_slopes(0)


def _official_get_slopes(n):
    # ofirpress/attention_with_linear_biases, fairseq/models/transformer.py
    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + _official_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def test_alibi_slopes_powers_of_two():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)], rtol=1e-7)
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
