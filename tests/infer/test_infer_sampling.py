"""Sampling: each filter and penalty against a numpy reference, greedy rows, seeds, log-probabilities."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulm_jax.infer.sampling import (
    SamplingArrays,
    SamplingError,
    SamplingParams,
    apply_penalties,
    choose_tokens,
    filter_logits,
    mask_vocab,
    token_logprobs,
)


def arrays(*rows: SamplingParams, seeds=None) -> SamplingArrays:
    seeds = seeds or [0] * len(rows)
    parts = [SamplingArrays.row(p, s) for p, s in zip(rows, seeds)]
    return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *parts)


def reference_kept(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Which tokens survive, from the documented semantics of Hugging Face's warpers (as vLLM applies them): each
    filter in turn on what the one before kept, renormalised. Temperature; top-k keeps the k most likely (and
    ties with the k-th); top-p keeps the most likely tokens until their probability reaches top_p (and ties with
    the last); min-p keeps tokens at least min_p times as likely as the most likely."""
    x = logits / p.temperature
    keep = np.ones_like(x, bool)

    def probs() -> np.ndarray:  # the distribution over the tokens kept so far
        e = np.where(keep, np.exp(x - x[keep].max()), 0.0)
        return e / e.sum()

    if p.top_k:
        keep &= x >= np.sort(x)[::-1][p.top_k - 1]
    if p.top_p < 1:
        q, mass, last = probs(), 0.0, None
        for i in np.argsort(-x, kind="stable"):
            last, mass = i, mass + q[i]
            if mass >= p.top_p:
                break
        keep &= x >= x[last]
    if p.min_p:
        q = probs()
        keep &= q >= p.min_p * q.max()
    return keep


def kept_by(p: SamplingParams, logits: np.ndarray) -> np.ndarray:
    filtered = np.asarray(jax.jit(filter_logits)(jnp.asarray(logits, jnp.float32), arrays(*[p] * len(logits))))
    return np.isfinite(filtered)


@pytest.mark.parametrize(
    "p",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.6),
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=2.0, min_p=0.3),
        SamplingParams(temperature=0.9, top_k=12, top_p=0.8),
        SamplingParams(temperature=1.0, top_k=6, top_p=0.5),
        SamplingParams(temperature=1.0, top_k=8, min_p=0.1),
        SamplingParams(temperature=0.8, top_p=0.7, min_p=0.1),
        SamplingParams(temperature=0.9, top_k=12, top_p=0.8, min_p=0.05),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0, top_p=1e-6),
    ],
)
def test_filters_keep_the_same_tokens_as_the_reference(p):
    logits = np.random.default_rng(1).normal(0, 2, (3, 40)).astype(np.float32)
    filtered = np.asarray(jax.jit(filter_logits)(jnp.asarray(logits), arrays(p, p, p)))
    for row in range(3):
        kept = np.isfinite(filtered[row])
        np.testing.assert_array_equal(kept, reference_kept(logits[row], p))
        np.testing.assert_allclose(filtered[row][kept], logits[row][kept] / p.temperature, rtol=1e-6)
        assert np.all(filtered[row][~kept] == -np.inf)


def test_no_filter_set_keeps_even_tokens_whose_probability_rounds_to_nothing():
    # exp(-50) and exp(-80) vanish beside 1 in float32: a nucleus of top_p 1, or a min-p floor of 0, would drop them
    assert kept_by(SamplingParams(), np.array([[0.0, -50.0, -80.0]]))[0].all()


def test_greedy_rows_take_the_argmax_even_beside_sampled_rows_and_near_ties():
    logits = jnp.asarray([[1.0, 1.0 - 1e-6, 0.0]] * 2)  # a near tie: tempered to ~0 it would still be a coin toss
    s = arrays(SamplingParams(temperature=0.0), SamplingParams(temperature=1.0))
    tokens = [int(choose_tokens(logits, s, jnp.array([pos, pos]))[0]) for pos in range(8)]
    assert tokens == [0] * 8


def test_top_p_takes_its_nucleus_from_the_top_k_distribution():
    logits = np.log([[0.30, 0.25, 0.20, 0.10, 0.08, 0.07]])
    # top-k 3 leaves 0.40, 0.33, 0.27: the first two reach 0.6; from the whole distribution it would take three
    assert kept_by(SamplingParams(top_k=3, top_p=0.6), logits)[0].tolist() == [True, True, False, False, False, False]
    assert kept_by(SamplingParams(top_p=0.6), logits)[0].tolist() == [True, True, True, False, False, False]


def test_min_p_applies_after_temperature_relative_to_the_likeliest():
    logits = np.log([[0.30, 0.25, 0.20, 0.10, 0.08, 0.07]])
    assert kept_by(SamplingParams(min_p=0.5), logits)[0].sum() == 3  # p >= 0.15
    assert kept_by(SamplingParams(temperature=2.0, min_p=0.5), logits)[0].sum() == 5  # sqrt(p / 0.30) >= 0.5


def test_rows_with_different_settings_are_filtered_independently():
    logits = np.random.default_rng(2).normal(0, 2, (2, 30)).astype(np.float32)
    a, b = SamplingParams(top_k=3), SamplingParams(top_p=0.5, temperature=0.5)
    filtered = np.asarray(filter_logits(jnp.asarray(logits), arrays(a, b)))
    np.testing.assert_array_equal(np.isfinite(filtered[0]), reference_kept(logits[0], a))
    np.testing.assert_array_equal(np.isfinite(filtered[1]), reference_kept(logits[1], b))


def test_penalties_match_the_reference():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 20)).astype(np.float32)
    counts = rng.integers(0, 3, (2, 20)).astype(np.int32)
    prompt = rng.random((2, 20)) < 0.3
    p = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    out = np.asarray(apply_penalties(jnp.asarray(logits), arrays(p, p), jnp.asarray(counts), jnp.asarray(prompt)))
    seen = prompt | (counts > 0)
    expected = np.where(seen, np.where(logits > 0, logits / 1.3, logits * 1.3), logits)
    expected = expected - 0.5 * (counts > 0) - 0.25 * counts
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_greedy_rows_take_the_argmax_and_sampled_rows_follow_their_seed():
    logits = jnp.asarray(np.random.default_rng(4).normal(0, 1, (3, 50)).astype(np.float32))
    greedy, hot = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)
    pos = jnp.array([7, 7, 7])
    tokens = np.asarray(choose_tokens(logits, arrays(greedy, hot, hot, seeds=[0, 11, 11]), pos))
    assert tokens[0] == int(jnp.argmax(logits[0]))
    again = np.asarray(choose_tokens(logits, arrays(hot, hot, greedy, seeds=[11, 11, 0]), pos))
    assert tokens[1] == again[0] == again[1]  # same seed, same position: same token, whatever the slot


def test_sampling_follows_the_tempered_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    p = SamplingParams(temperature=1.0)
    draws = jax.jit(jax.vmap(lambda pos: choose_tokens(jnp.asarray(logits)[None], arrays(p), pos[None])[0]))(
        jnp.arange(4000)
    )
    freq = np.bincount(np.asarray(draws), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_logprobs_of_chosen_and_top_tokens():
    logits = np.random.default_rng(5).normal(0, 1, (2, 10)).astype(np.float32)
    chosen, top_ids, top_lp = token_logprobs(jnp.asarray(logits), jnp.array([3, 9]), 4)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chex.assert_shape((top_ids, top_lp), (2, 4))
    np.testing.assert_allclose(chosen, [logp[0, 3], logp[1, 9]], rtol=1e-5)
    np.testing.assert_array_equal(top_ids, np.argsort(-logp, axis=-1)[:, :4])
    np.testing.assert_allclose(top_lp, np.sort(logp, axis=-1)[:, ::-1][:, :4], rtol=1e-5)


@pytest.mark.parametrize(
    "field, allowed, refused, expected",
    [  # the extreme values allowed, and just outside them
        ("max_tokens", [1], [0], "an integer >= 1"),
        ("temperature", [0.0, 2.0], [-0.01, 2.01], "a number in [0, 2]"),
        ("top_k", [0], [-1], "an integer >= 0"),
        ("top_p", [1e-9, 1.0], [0.0, 1.01], "a number in (0, 1]"),
        ("min_p", [0.0, 1.0], [-0.01, 1.01], "a number in [0, 1]"),
        ("repetition_penalty", [1e-9, 10.0], [0.0, 10.01], "a number in (0, 10]"),
        ("presence_penalty", [-2.0, 2.0], [-2.01, 2.01], "a number in [-2, 2]"),
        ("frequency_penalty", [-2.0, 2.0], [-2.01, 2.01], "a number in [-2, 2]"),
        ("seed", [None, 0, 2**63 - 1], [-1, 2**63], "an integer in [0, 9223372036854775808)"),
        ("logprobs", [None, 0, 5], [-1, 6], "an integer in [0, 5]"),
        ("stop", [(), ("a", "\n")], [("",), ("a", 1)], "non-empty strings"),
        ("num_beams", [1, 16], [0, 17], "an integer in [1, 16]"),
        ("length_penalty", [0.0, 2.0], [-0.01, 2.01], "a number in [0, 2]"),
    ],
)
def test_each_setting_is_checked_at_its_bounds_and_named_with_what_is_expected(field, allowed, refused, expected):
    for value in allowed:
        SamplingParams(**{field: value}).validate(max_logprobs=5)
    for value in refused:
        with pytest.raises(SamplingError) as refusal:
            SamplingParams(**{field: value}).validate(max_logprobs=5)
        assert str(refusal.value) == f"{field}={value!r} is out of range: expected {expected}"


@pytest.mark.parametrize(
    "setting,value",
    [("repetition_penalty", 1.2), ("presence_penalty", 0.5), ("frequency_penalty", -0.5), ("logprobs", 0)],
)
def test_beam_search_refuses_penalties_and_logprobs_naming_them_and_ignores_what_only_sampling_uses(setting, value):
    with pytest.raises(SamplingError, match=rf"^{setting}={value} is not allowed with num_beams=2: beam search ranks"):
        SamplingParams(num_beams=2, **{setting: value}).validate(max_logprobs=5)
    SamplingParams(num_beams=1, **{setting: value}).validate(max_logprobs=5)
    SamplingParams(num_beams=2, temperature=1.5, top_k=3, top_p=0.5, min_p=0.1, seed=1).validate(max_logprobs=5)


def test_replace_changes_only_the_settings_named():
    p = SamplingParams(temperature=0.5, top_k=3)
    assert p.replace(top_k=7) == SamplingParams(temperature=0.5, top_k=7) and p.top_k == 3


def test_a_row_holds_the_settings_in_their_dtypes_and_the_seeds_key():
    seed = 2**40 + 12345  # both 32-bit halves matter
    p = SamplingParams(
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        min_p=0.1,
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.4,
    )
    row = SamplingArrays.row(p, seed)
    values = [
        row.temperature_B,
        row.top_k_B,
        row.top_p_B,
        row.min_p_B,
        row.repetition_B,
        row.presence_B,
        row.frequency_B,
    ]
    assert [v.dtype for v in values] == [np.float32, np.int32] + [np.float32] * 5
    np.testing.assert_allclose(np.concatenate(values), [0.7, 5, 0.9, 0.1, 1.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(row.key_Bx2, [[2**8, 12345]])  # PRNGKey(seed)'s with 64-bit integers enabled
    below_2_32 = SamplingArrays.row(p, 12345).key_Bx2
    np.testing.assert_array_equal(below_2_32, jax.random.key_data(jax.random.PRNGKey(12345))[None])
    assert row.key_Bx2.dtype == np.uint32


def test_empty_slots_hold_greedy_settings_that_filter_and_penalize_nothing():
    zeros = SamplingArrays.zeros(3)
    chex.assert_shape(zeros.key_Bx2, (3, 2))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), zeros) == jax.tree.map(
        lambda x: ((3, *x.shape[1:]), x.dtype), arrays(SamplingParams(), SamplingParams())
    )
    want = SamplingArrays.row(SamplingParams(temperature=0.0), 0)
    jax.tree.map(lambda z, w: np.testing.assert_array_equal(z, np.repeat(w, 3, axis=0)), zeros, want)
    buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(zeros)]
    assert len(set(buffers)) == len(buffers)  # distinct: the decode step donates each


def test_ids_past_the_vocabulary_are_masked_and_the_rest_kept():
    logits = jnp.asarray(np.random.default_rng(6).normal(0, 1, (2, 10)).astype(np.float32))
    masked = np.asarray(mask_vocab(logits, 7))
    np.testing.assert_array_equal(masked[:, :7], np.asarray(logits)[:, :7])
    assert np.all(masked[:, 7:] == -np.inf)
    np.testing.assert_array_equal(np.asarray(mask_vocab(logits, 10)), np.asarray(logits))
    np.testing.assert_array_equal(np.asarray(mask_vocab(logits, 12)), np.asarray(logits))
