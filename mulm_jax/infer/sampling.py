"""Choosing the next token: pure functions over logits, with each sequence's settings held in arrays.

Every sequence in a batch carries its own temperature, filters, penalties and seed as rows of
`SamplingArrays`, so sequences with different settings share one compiled decode step. Greedy rows
(temperature 0) take the argmax of the penalized logits; the others sample from the penalized, tempered
and filtered distribution with a key derived from their seed and position (same seed, same text). The filters
follow Hugging Face's warpers (and vLLM): temperature, then top-k, then top-p over the top-k distribution
renormalised, then min-p relative to the most likely token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mulm_jax.config_schema import range_text, within
from mulm_jax.errors import MulmError


class SamplingError(MulmError):
    """A sampling setting out of range; the message names the setting, the value and what is allowed."""


# The range of each setting, in pydantic's terms (ge, gt, le, lt; an integer setting's bounds written as integers):
# SamplingParams.validate checks them, and the API's request bodies declare them (so /openapi.json states them).
# temperature stops at 2, as in OpenAI's API: clients written against it send nothing higher, and past 2 a small
# model's distribution is all but flat.
LIMITS: dict[str, dict[str, float]] = {
    "max_tokens": {"ge": 1},
    "temperature": {"ge": 0.0, "le": 2.0},
    "top_k": {"ge": 0},  # 0: no top-k filter
    "top_p": {"gt": 0.0, "le": 1.0},
    "min_p": {"ge": 0.0, "le": 1.0},
    "repetition_penalty": {"gt": 0.0, "le": 10.0},
    "presence_penalty": {"ge": -2.0, "le": 2.0},
    "frequency_penalty": {"ge": -2.0, "le": 2.0},
    "seed": {"ge": 0, "lt": 2**63},
    # Beam search (infer.beam): each number of beams compiles its own program and holds that many copies of the
    # caches. The length penalty's alpha from 0 (none) up: early stopping is exact only while lp grows with length.
    "num_beams": {"ge": 1, "le": 16},
    "length_penalty": {"ge": 0.0, "le": 2.0},
}
# What beam search needs left as it is: it ranks by the model's own log-probabilities and reports no alternatives.
BEAM_PLAIN = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": None}


def _describe(limits: dict[str, float]) -> str:
    """A LIMITS entry in words: `an integer in [0, 5)`, `a number in (0, 1]`, `an integer >= 1`."""
    what = "an integer" if all(isinstance(bound, int) for bound in limits.values()) else "a number"
    return f"{what} {range_text(limits)}"


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for. temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 filter nothing.

    repetition_penalty (as in CTRL / Hugging Face) divides positive logits and multiplies negative ones of
    every token already in the prompt or the output; presence and frequency penalties (as in OpenAI's API)
    subtract `presence` once and `frequency` per occurrence for tokens in the output.

    num_beams > 1 searches instead (infer.beam): the best of `num_beams` beams by log-probability over the length
    penalty ((5 + length) / 6) ** length_penalty, ending early once no beam can improve on those kept. It draws
    nothing, so temperature, the filters and the seed do not apply; penalties and logprobs are refused (BEAM_PLAIN).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: Optional[int] = None  # None: no log-probabilities; n >= 0: the chosen token's and n alternatives
    num_beams: int = 1
    length_penalty: float = 0.6  # "Attention Is All You Need"'s alpha
    early_stopping: bool = True

    def validate(self, max_logprobs: int) -> None:
        """Raise SamplingError naming the first setting outside its range (LIMITS; logprobs: up to `max_logprobs`)."""
        for name, allowed in {**LIMITS, "logprobs": {"ge": 0, "le": max_logprobs}}.items():
            value = getattr(self, name)
            if value is not None and not within(value, allowed):
                raise SamplingError(f"{name}={value!r} is out of range: expected {_describe(allowed)}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise SamplingError(f"stop={self.stop!r} is out of range: expected non-empty strings")
        for name, plain in BEAM_PLAIN.items() if self.num_beams > 1 else ():
            if getattr(self, name) != plain:
                raise SamplingError(
                    f"{name}={getattr(self, name)!r} is not allowed with num_beams={self.num_beams}: "
                    "beam search ranks by the model's log-probabilities and lists no alternatives"
                )

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


@flax.struct.dataclass
class SamplingArrays:
    """Per-sequence settings, one row per slot (float32 unless noted)."""

    temperature_B: jax.Array
    top_k_B: jax.Array  # int32
    top_p_B: jax.Array
    min_p_B: jax.Array
    repetition_B: jax.Array
    presence_B: jax.Array
    frequency_B: jax.Array
    key_Bx2: jax.Array  # uint32 raw key data of each sequence's seed

    @classmethod
    def zeros(cls, batch: int) -> "SamplingArrays":
        f = lambda value: jnp.full((batch,), value, jnp.float32)  # noqa: E731  (distinct buffers: all are donated)
        return cls(
            f(0.0),
            jnp.zeros((batch,), jnp.int32),
            f(1.0),
            f(0.0),
            f(1.0),
            f(0.0),
            f(0.0),
            jnp.zeros((batch, 2), jnp.uint32),
        )

    @classmethod
    def row(cls, p: SamplingParams, seed: int) -> "SamplingArrays":
        """One sequence's settings as a batch of one, on the host (numpy), ready to be written into a slot."""
        f = lambda x: np.asarray([x], np.float32)  # noqa: E731
        key = np.asarray([[seed >> 32 & 0xFFFFFFFF, seed & 0xFFFFFFFF]], np.uint32)  # = jax.random.PRNGKey(seed)
        return cls(
            f(p.temperature),
            np.asarray([p.top_k], np.int32),
            f(p.top_p),
            f(p.min_p),
            f(p.repetition_penalty),
            f(p.presence_penalty),
            f(p.frequency_penalty),
            key,
        )


def apply_penalties(
    logits_BxV: jax.Array, s: SamplingArrays, output_counts_BxV: jax.Array, prompt_mask_BxV: jax.Array
) -> jax.Array:
    """Repetition penalty over prompt and output tokens; presence and frequency penalties over output tokens."""
    seen_BxV = prompt_mask_BxV | (output_counts_BxV > 0)
    r_Bx1 = s.repetition_B[:, None]
    penalized = jnp.where(logits_BxV > 0, logits_BxV / r_Bx1, logits_BxV * r_Bx1)
    logits_BxV = jnp.where(seen_BxV, penalized, logits_BxV)
    counts = output_counts_BxV.astype(jnp.float32)
    return logits_BxV - s.presence_B[:, None] * (counts > 0) - s.frequency_B[:, None] * counts


def mask_vocab(logits_BxV: jax.Array, vocab: int) -> jax.Array:
    """Logits with the ids from `vocab` on set to -inf: rows of a padded embedding table that no tokenizer piece
    has are never chosen, and never listed among the likeliest tokens."""
    V = logits_BxV.shape[-1]
    return logits_BxV if vocab >= V else jnp.where(jnp.arange(V) < vocab, logits_BxV, -jnp.inf)


def filter_logits(logits_BxV: jax.Array, s: SamplingArrays) -> jax.Array:
    """Tempered logits with the tokens removed by top-k, top-p (nucleus) and min-p set to -inf.

    Each filter sees what the one before kept, renormalised: the nucleus is the smallest set of the top-k tokens
    whose top-k probability reaches top_p; min-p keeps tokens at least min_p times as likely as the likeliest.
    Ties at a top-k or top-p boundary are kept (a token is removed only when strictly less likely than the last
    one kept), so the result does not depend on how the sort orders equal logits.
    """
    V = logits_BxV.shape[-1]
    scaled_BxV = logits_BxV / jnp.maximum(s.temperature_B, 1e-6)[:, None]
    sorted_BxV = -jnp.sort(-scaled_BxV, axis=-1)  # descending
    k_B = jnp.where(s.top_k_B > 0, jnp.minimum(s.top_k_B, V), V)
    kth_B = jnp.take_along_axis(sorted_BxV, (k_B - 1)[:, None], axis=-1)[:, 0]
    top_k_BxV = jnp.where(sorted_BxV >= kth_B[:, None], sorted_BxV, -jnp.inf)
    probs_BxV = jax.nn.softmax(top_k_BxV, axis=-1)  # the top-k distribution
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the more likely tokens
    # nucleus: the smallest prefix whose mass reaches top_p; its last token is the first with mass_before < p
    last_in_nucleus_B = jnp.sum(mass_before_BxV < s.top_p_B[:, None], axis=-1) - 1
    nucleus_min_B = jnp.take_along_axis(sorted_BxV, last_in_nucleus_B[:, None], axis=-1)[:, 0]
    nucleus_min_B = jnp.where(s.top_p_B < 1, nucleus_min_B, -jnp.inf)  # top_p 1 keeps even what rounds to no mass
    min_p_floor_B = sorted_BxV[:, 0] + jnp.log(jnp.maximum(s.min_p_B, 1e-30))  # p >= min_p * p_max
    floor_B = jnp.maximum(jnp.maximum(kth_B, nucleus_min_B), jnp.where(s.min_p_B > 0, min_p_floor_B, -jnp.inf))
    return jnp.where(scaled_BxV >= floor_B[:, None], scaled_BxV, -jnp.inf)


def choose_tokens(logits_BxV: jax.Array, s: SamplingArrays, positions_B: jax.Array) -> jax.Array:
    """Greedy rows take the argmax; others sample from the filtered distribution with key (seed, position)."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

    def sample(_):
        filtered_BxV = filter_logits(logits_BxV, s)
        keys = jax.vmap(lambda k, p: jax.random.fold_in(jax.random.wrap_key_data(k), p))(s.key_Bx2, positions_B)
        sampled_B = jax.vmap(jax.random.categorical)(keys, filtered_BxV).astype(jnp.int32)
        return jnp.where(s.temperature_B > 0, sampled_B, greedy_B)

    return lax.cond(jnp.any(s.temperature_B > 0), sample, lambda _: greedy_B, None)


def token_logprobs(logits_BxV: jax.Array, tokens_B: jax.Array, num_top: int) -> tuple[jax.Array, ...]:
    """Log-probabilities under the model (before penalties and filters): of the chosen tokens [B], and the
    `num_top` most likely tokens with theirs ([B, N] ids, [B, N] log-probabilities)."""
    logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    chosen_B = jnp.take_along_axis(logp_BxV, tokens_B[:, None], axis=-1)[:, 0]
    top_logp_BxN, top_ids_BxN = lax.top_k(logp_BxV, num_top)
    return chosen_B, top_ids_BxN.astype(jnp.int32), top_logp_BxN
