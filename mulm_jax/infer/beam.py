"""Beam search: the likeliest continuations of a prompt under a length penalty, one compiled program per bucket.

The prompt is prefilled once and its caches (and an encoder-decoder's source) copied to K beams; each step of a
`lax.while_loop` then decodes the K beams as a batch of K, scores the K x V continuations, keeps the 2K best of
them, moves those that end (an end token, or `max_tokens` reached) among the K best finished hypotheses, and goes
on with the K best of the others, each beam's caches reordered after the beam it continues.

A finished hypothesis Y (its tokens, the end token included) is ranked by log P(Y) / lp(Y) with the length penalty
of Wu et al. (2016), lp(Y) = ((5 + |Y|) / 6) ** alpha, as "Attention Is All You Need" (2017) decoded with it (beam
4, alpha 0.6). Early stopping is the Transformer's own (tensor2tensor's `stop_early`, also Flax's beam search): the
search ends once no live beam can reach a score above the worst of the K kept hypotheses. As log-probabilities
only fall and, for alpha >= 0, lp only grows, a live beam's best reachable score is its log-probability so far over
lp(max_tokens); so early stopping never changes the result, only saves steps. (Hugging Face's
`early_stopping=True` is another rule, which ends once K hypotheses have finished; its "never" gives our result.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mulm_jax import platform
from mulm_jax.infer.buckets import CompiledPerBucket
from mulm_jax.infer.layout import serving_layout
from mulm_jax.infer.loading import InferenceError
from mulm_jax.infer.sampling import mask_vocab
from mulm_jax.models import LanguageModel
from mulm_jax.nn.attention import KVCache
from mulm_jax.nn.positional import TABLES


def length_penalty(length: jax.Array, alpha: jax.Array) -> jax.Array:
    """Wu et al. (2016)'s lp(Y) = ((5 + |Y|) / 6) ** alpha for a hypothesis of `length` tokens."""
    return ((5.0 + length) / 6.0) ** alpha


@flax.struct.dataclass
class BeamState:
    caches: tuple[KVCache, ...]  # self-attention, one per layer, [K, kv heads, max_len, Dh]: beam k's sequence
    logp_KxV: jax.Array  # float32: each live beam's log-probabilities of its next token
    live_logp_K: jax.Array  # float32: log P of each live beam's tokens so far (-inf: no beam)
    live_KxN: jax.Array  # int32: the live beams' tokens, the first `t` of N
    done_KxN: jax.Array  # int32: the K best finished hypotheses' tokens, best first
    done_len_K: jax.Array  # int32: their lengths
    done_logp_K: jax.Array  # float32: their log P
    done_score_K: jax.Array  # float32: their log P / lp (-inf: none)
    t: jax.Array  # int32: tokens in each live beam


@dataclass(frozen=True)
class Hypothesis:
    token_ids: tuple[int, ...]  # generated tokens, an end token last when it ended with one
    logprob: float  # log P(tokens | prompt)
    score: float  # logprob / lp(len(token_ids)): what hypotheses are ranked by
    finish_reason: str  # "stop" (an end token) or "length" (max_tokens)


@dataclass(frozen=True)
class BeamResult:
    hypotheses: tuple[Hypothesis, ...]  # up to K, best first
    steps: int  # decode steps the search took (max_tokens unless it stopped early or ran out of beams)


class BeamSearch:
    """Beam search for `model` over sequences of up to `max_len` positions (the arguments are SlotSteps').

    `search` compiles one program per prompt bucket and number of beams (counted in `compiled.compilations`); the
    number of new tokens, the length penalty, early stopping and the end tokens are arguments of it.
    """

    def __init__(
        self,
        model: LanguageModel,
        max_len: int,
        unpack_params: Callable[[Any], Any] = lambda params: params,
        vocab: Optional[int] = None,
        weight_first: bool = False,
        compiled: Optional[CompiledPerBucket] = None,
    ):
        self.model, self.cfg, self.unpack_params, self.max_len = model, model.cfg, unpack_params, max_len
        self.vocab = vocab or self.cfg.vocab_size  # ids from here on are never chosen (see sampling.mask_vocab)
        self.window = model.cache_window()
        self.unbounded = self.window is not None and self.cfg.positional not in TABLES
        self.compiled = compiled or CompiledPerBucket(max_len)
        step = serving_layout()(self._search) if weight_first else self._search
        self._run = self.compiled.jit(
            step, static_argnames=("num_beams",), compiler_options=platform.compiler_options()
        )

    def check(self, prompt_ids: Sequence[int], max_tokens: int) -> None:
        """Raise InferenceError unless `max_tokens` new tokens after `prompt_ids` fit the beams' positions."""
        taken = 0 if self.unbounded else int(self.model.prompt_arrays(prompt_ids, self.compiled.pad)[1])
        room = self.max_len - taken  # a ring cache's positions go on, but each beam holds max_len tokens
        if max_tokens > room:
            raise InferenceError(
                f"max_tokens={max_tokens} does not fit beam search's {self.max_len} positions after "
                f"this prompt: ask for at most {room} new tokens"
            )

    def search(
        self,
        params: Any,
        prompt_ids: Sequence[int],
        num_beams: int,
        max_tokens: int,
        alpha: float = 0.6,
        early_stopping: bool = True,
        end_ids: Collection[int] = (),
    ) -> BeamResult:
        """The `num_beams` best hypotheses of up to `max_tokens` tokens after `prompt_ids`, by log P / lp with
        length penalty `alpha`; a hypothesis ends at any of `end_ids` (or at max_tokens)."""
        self.check(prompt_ids, max_tokens)
        V = self.cfg.vocab_size
        end_V = np.zeros((V,), bool)
        end_V[[i for i in end_ids if 0 <= i < V]] = True
        ids_1xL, length, *source = self.model.prompt_arrays(prompt_ids, self.compiled.pad)
        out = self._run(
            params,
            ids_1xL,
            length,
            end_V,
            np.int32(max_tokens),
            np.float32(alpha),
            np.bool_(early_stopping),
            *source,
            num_beams=num_beams,
        )
        tokens_KxN, len_K, logp_K, score_K, steps = jax.device_get(out)
        hypotheses = []
        for tokens_N, n, logp, score in zip(tokens_KxN, len_K, logp_K, score_K):
            if score == -np.inf:  # fewer hypotheses than beams (a tiny vocabulary, or few new tokens)
                continue
            ids = tuple(int(i) for i in tokens_N[:n])
            hypotheses.append(Hypothesis(ids, float(logp), float(score), "stop" if end_V[ids[-1]] else "length"))
        return BeamResult(tuple(hypotheses), int(steps))

    def _search(
        self,
        params: Any,
        ids_1xL: jax.Array,
        length: jax.Array,
        end_V: jax.Array,
        max_tokens: jax.Array,
        alpha: jax.Array,
        early_stopping: jax.Array,
        *source: jax.Array,
        num_beams: int,
    ) -> tuple[jax.Array, ...]:
        """The finished hypotheses' tokens, lengths, log P and scores, best first, and the steps taken."""
        cfg, K, N, V = self.cfg, num_beams, self.max_len, self.cfg.vocab_size
        dtype = jnp.dtype(cfg.dtype)
        variables = {"params": self.unpack_params(params)}
        fresh = tuple(
            KVCache.zeros(1, ids_1xL.shape[1], cfg.kv_heads, cfg.head_dim, dtype) for _ in range(cfg.decoder_layers)
        )
        logits_1xLxV, prompt_caches, prompt_source = self.model.apply(
            variables, ids_1xL, length, *source, caches=fresh, method="prefill"
        )
        if self.window:
            prompt_caches = tuple(c.as_ring(jnp.reshape(length, (1,)), self.window) for c in prompt_caches)

        def copy_to_beams(buf, row):  # the prompt's row in every beam's row, at the start of its positions
            rows = jnp.broadcast_to(row, (K,) + row.shape[1:]).astype(buf.dtype)
            return lax.dynamic_update_slice(buf, rows, (0,) * buf.ndim)

        empty = tuple(
            KVCache.zeros(K, self.window or N, cfg.kv_heads, cfg.head_dim, dtype, self.window is not None)
            for _ in range(cfg.decoder_layers)
        )
        caches = jax.tree.map(copy_to_beams, empty, prompt_caches)
        source = jax.tree.map(copy_to_beams, self.model.empty_source(K), prompt_source)  # the same in every beam

        def log_softmax(logits_BxV):
            return jax.nn.log_softmax(mask_vocab(logits_BxV.astype(jnp.float32), self.vocab), axis=-1)

        logits_1xV = lax.dynamic_index_in_dim(logits_1xLxV[0], length - 1, keepdims=True)
        none_K = jnp.full((K,), -jnp.inf, jnp.float32)
        state = BeamState(
            caches=caches,
            logp_KxV=jnp.broadcast_to(log_softmax(logits_1xV), (K, V)),
            live_logp_K=none_K.at[0].set(0.0),  # one beam to start from: the others' continuations are all -inf
            live_KxN=jnp.zeros((K, N), jnp.int32),
            done_KxN=jnp.zeros((K, N), jnp.int32),
            done_len_K=jnp.zeros((K,), jnp.int32),
            done_logp_K=none_K,
            done_score_K=none_K,
            t=jnp.int32(0),
        )

        def searching(s: BeamState) -> jax.Array:
            best_live = jnp.max(s.live_logp_K)
            reachable = best_live / length_penalty(max_tokens, alpha)  # no live beam can score above it
            settled = jnp.min(s.done_score_K) > reachable
            return (s.t < max_tokens) & (best_live > -jnp.inf) & ~(early_stopping & settled)

        def step(s: BeamState) -> BeamState:
            cand_logp_2K, cand_2K = lax.top_k((s.live_logp_K[:, None] + s.logp_KxV).reshape(K * V), 2 * K)
            beam_2K, token_2K = cand_2K // V, cand_2K % V
            cand_2KxN = s.live_KxN[beam_2K].at[:, s.t].set(token_2K)
            n = s.t + 1
            ends_2K = end_V[token_2K]
            # The K best of the hypotheses finished before and those finishing now (all of them at max_tokens).
            new_score_2K = jnp.where(ends_2K | (n >= max_tokens), cand_logp_2K / length_penalty(n, alpha), -jnp.inf)
            done_score_K, keep_K = lax.top_k(jnp.concatenate([s.done_score_K, new_score_2K]), K)
            kept = lambda done, new: jnp.concatenate([done, new])[keep_K]  # noqa: E731
            # The K best that do not end go on (at most K of the 2K end, one per beam).
            live_logp_K, pick_K = lax.top_k(jnp.where(ends_2K, -jnp.inf, cand_logp_2K), K)
            beam_K, token_K = beam_2K[pick_K], token_2K[pick_K]
            caches = jax.tree.map(lambda buf: jnp.take(buf, beam_K, axis=0), s.caches)
            pos_Kx1 = jnp.full((K, 1), length + s.t, jnp.int32)
            logits_Kx1xV, caches = self.model.apply(
                variables, token_K[:, None], pos_Kx1, caches, source, method="decode_step"
            )
            return BeamState(
                caches=caches,
                logp_KxV=log_softmax(logits_Kx1xV[:, 0]),
                live_logp_K=live_logp_K,
                live_KxN=cand_2KxN[pick_K],
                done_KxN=kept(s.done_KxN, cand_2KxN),
                done_len_K=kept(s.done_len_K, jnp.full((2 * K,), n, jnp.int32)),
                done_logp_K=kept(s.done_logp_K, cand_logp_2K),
                done_score_K=done_score_K,
                t=n,
            )

        s = lax.while_loop(searching, step, state)
        return s.done_KxN, s.done_len_K, s.done_logp_K, s.done_score_K, s.t
