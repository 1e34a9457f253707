"""The compiled steps of generation over a fixed number of slots: prefill one request into a slot, then
advance every slot by one token. The whole state (caches, last tokens, positions, sampling settings, token
counts) lives on the device and is donated through each step, so the caches are updated in place.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mulm_jax import platform
from mulm_jax.infer.buckets import CompiledPerBucket
from mulm_jax.infer.layout import serving_layout
from mulm_jax.infer.sampling import SamplingArrays, apply_penalties, choose_tokens, mask_vocab, token_logprobs
from mulm_jax.models import LanguageModel
from mulm_jax.nn.attention import KVCache
from mulm_jax.nn.positional import TABLES


@flax.struct.dataclass
class SlotState:
    caches: tuple[KVCache, ...]  # self-attention, one per layer, [B, K, max_len, Dh]
    source: Any  # what the model's prefill keeps of a prompt beside the caches (see its `empty_source`)
    tokens_B: jax.Array  # int32: each slot's newest token, the input of its next step
    pos_B: jax.Array  # int32: the position that token sits at
    sampling: SamplingArrays
    counts_BxV: jax.Array  # int32: how often each token occurs in each slot's output so far
    prompt_mask_BxV: jax.Array  # bool: which tokens occur in each slot's prompt


@flax.struct.dataclass
class StepOutput:
    tokens_B: jax.Array
    logprobs_B: jax.Array  # of the chosen tokens under the model (zeros unless asked for)
    top_ids_BxN: jax.Array
    top_logprobs_BxN: jax.Array


class SlotSteps:
    """prefill and decode for `model` over `slots` sequences of up to `max_len` positions.

    Each step also picks the next tokens (SamplingArrays per slot) and, when asked, their log-probabilities
    and the `num_logprobs` most likely alternatives. `unpack_params` maps the params as stored (int8 weights,
    say) to the params the model takes, inside the compiled steps; with `weight_first` these hold their dense
    kernels in the serving layout (infer.layout), which the steps are then traced under. The steps are compiled
    with the backend's options (platform.compiler_options) over the prompt buckets of `compiled`, whose
    `compilations` counts them: one per prompt bucket for prefill, one for decode.
    """

    def __init__(
        self,
        model: LanguageModel,
        slots: int,
        max_len: int,
        num_logprobs: int = 5,
        unpack_params: Callable[[Any], Any] = lambda params: params,
        vocab: Optional[int] = None,
        weight_first: bool = False,
    ):
        self.model, self.cfg, self.unpack_params = model, model.cfg, unpack_params
        self.vocab = vocab or self.cfg.vocab_size  # ids from here on are never chosen (see sampling.mask_vocab)
        self.slots, self.max_len, self.num_logprobs = slots, max_len, num_logprobs
        # A sliding-window decoder keeps a ring of its window's positions per slot (see KVCache) and, unless its
        # positions come from a table, goes on past max_len: `position_limit` bounds a slot's positions.
        self.window = model.cache_window()
        self.unbounded = self.window is not None and self.cfg.positional not in TABLES
        self.position_limit = 2**31 - 1 if self.unbounded else max_len
        self.compiled = CompiledPerBucket(max_len)
        options = platform.compiler_options()

        def compile_(step):
            return self.compiled.jit(
                serving_layout()(step) if weight_first else step, donate_argnums=(1,), compiler_options=options
            )

        self.prefill, self.decode = compile_(self._prefill), compile_(self._decode)

    def init_state(self) -> SlotState:
        cfg, B = self.cfg, self.slots
        dtype = jnp.dtype(cfg.dtype)
        caches = tuple(
            KVCache.zeros(B, self.window or self.max_len, cfg.kv_heads, cfg.head_dim, dtype, self.window is not None)
            for _ in range(cfg.decoder_layers)
        )
        V = cfg.vocab_size
        return SlotState(
            caches=caches,
            source=self.model.empty_source(B),
            tokens_B=jnp.zeros((B,), jnp.int32),
            pos_B=jnp.zeros((B,), jnp.int32),
            sampling=SamplingArrays.zeros(B),
            counts_BxV=jnp.zeros((B, V), jnp.int32),
            prompt_mask_BxV=jnp.zeros((B, V), bool),
        )

    def _pick(self, logits_BxV, sampling, counts_BxV, prompt_mask_BxV, new_pos_B, want_logprobs) -> StepOutput:
        logits_BxV = mask_vocab(logits_BxV, self.vocab)
        penalized = lax.cond(
            jnp.any((sampling.repetition_B != 1) | (sampling.presence_B != 0) | (sampling.frequency_B != 0)),
            lambda: apply_penalties(logits_BxV, sampling, counts_BxV, prompt_mask_BxV),
            lambda: logits_BxV,
        )
        tokens_B = choose_tokens(penalized, sampling, new_pos_B)
        B, N = tokens_B.shape[0], self.num_logprobs
        logprobs = lax.cond(
            want_logprobs,
            lambda: token_logprobs(logits_BxV, tokens_B, N),
            lambda: (jnp.zeros((B,)), jnp.zeros((B, N), jnp.int32), jnp.zeros((B, N))),
        )
        return StepOutput(tokens_B, *logprobs)

    def _prefill(
        self,
        params: Any,
        state: SlotState,
        slot: jax.Array,
        ids_1xL: jax.Array,
        length: jax.Array,
        sampling_row: SamplingArrays,
        want_logprobs: jax.Array,
        *source: jax.Array,
    ) -> tuple[SlotState, StepOutput]:
        """Run a prompt (ids_1xL, `length` real tokens then padding, and the `source` arrays of an encoder-decoder:
        the model's `prompt_arrays`) into `slot`; choose its first new token."""
        cfg, L = self.cfg, ids_1xL.shape[1]
        dtype = jnp.dtype(cfg.dtype)
        fresh = tuple(KVCache.zeros(1, L, cfg.kv_heads, cfg.head_dim, dtype) for _ in range(cfg.decoder_layers))
        valid_1xL = jnp.arange(L, dtype=jnp.int32)[None] < length
        variables = {"params": self.unpack_params(params)}
        logits_1xLxV, new_caches, new_source = self.model.apply(
            variables, ids_1xL, length, *source, caches=fresh, method="prefill"
        )
        if self.window:
            new_caches = tuple(c.as_ring(jnp.reshape(length, (1,)), self.window) for c in new_caches)
        put = lambda buf, row: lax.dynamic_update_slice(buf, row.astype(buf.dtype), (slot,) + (0,) * (buf.ndim - 1))  # noqa: E731,E501
        caches = jax.tree.map(put, state.caches, new_caches)
        V = cfg.vocab_size
        prompt_mask_1xV = jnp.zeros((1, V), bool).at[0, jnp.where(valid_1xL[0], ids_1xL[0], V)].set(True, mode="drop")
        logits_1xV = lax.dynamic_index_in_dim(logits_1xLxV[0], length - 1, keepdims=True)
        out = self._pick(
            logits_1xV,
            sampling_row,
            jnp.zeros((1, V), jnp.int32),
            prompt_mask_1xV,
            jnp.reshape(length, (1,)),
            want_logprobs,
        )
        state = SlotState(
            caches=caches,
            source=jax.tree.map(put, state.source, new_source),
            tokens_B=state.tokens_B.at[slot].set(out.tokens_B[0]),
            pos_B=state.pos_B.at[slot].set(length),
            sampling=jax.tree.map(put, state.sampling, sampling_row),
            counts_BxV=put(state.counts_BxV, jax.nn.one_hot(out.tokens_B, V, dtype=jnp.int32)),
            prompt_mask_BxV=put(state.prompt_mask_BxV, prompt_mask_1xV),
        )
        return state, out

    def _decode(
        self, params: Any, state: SlotState, active_B: jax.Array, want_logprobs: jax.Array
    ) -> tuple[SlotState, StepOutput]:
        """Feed every slot's newest token and choose the next; inactive slots compute but do not advance.

        A slot whose sequence has filled its positions (a finished request, or the step the engine runs ahead
        while it reads the previous one) computes at the last position instead of past the end: a position
        past the cache would be written nowhere, and a learned position table would give NaN there, which
        the slot's next request would then read through its masked cache entries (0 * NaN).
        """
        variables = {"params": self.unpack_params(params)}
        # Inactive slots compute at position 0: they then read no cache (see nn.attention.cached_attention),
        # and what they write to their slot 0 the next prefill into that slot overwrites.
        pos_B = jnp.where(active_B, jnp.minimum(state.pos_B, self.position_limit - 1), 0)
        logits_Bx1xV, caches = self.model.apply(
            variables, state.tokens_B[:, None], pos_B[:, None], state.caches, state.source, method="decode_step"
        )
        out = self._pick(
            logits_Bx1xV[:, 0], state.sampling, state.counts_BxV, state.prompt_mask_BxV, state.pos_B + 1, want_logprobs
        )
        step_B = active_B.astype(jnp.int32)
        V = self.cfg.vocab_size
        return state.replace(
            caches=caches,
            tokens_B=jnp.where(active_B, out.tokens_B, state.tokens_B),
            pos_B=jnp.minimum(state.pos_B + step_B, self.position_limit),
            counts_BxV=state.counts_BxV + jax.nn.one_hot(out.tokens_B, V, dtype=jnp.int32) * step_B[:, None],
        ), out


def host_output(out: StepOutput) -> dict[str, np.ndarray]:
    """A step's output fetched to the host in one transfer."""
    return {
        k: np.asarray(v)
        for k, v in zip(
            ("tokens", "logprobs", "top_ids", "top_logprobs"),
            jax.device_get((out.tokens_B, out.logprobs_B, out.top_ids_BxN, out.top_logprobs_BxN)),
        )
    }
