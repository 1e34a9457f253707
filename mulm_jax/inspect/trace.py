"""One forward pass of a loaded run, kept whole: tokens and their log-probabilities, attention weights, the
residual stream after each block and the logit lens, all read from the model's own modules (sown attention
weights and captured block outputs), never from a second copy of the forward pass."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.infer.decoding import prompt_buckets
from mulm_jax.infer.loading import InferenceError, LoadedModel
from mulm_jax.nn.blocks import Block, make_norm


class InspectError(InferenceError):
    """A prompt, layer or head that inspection cannot use; the message names the value and the allowed range."""


@dataclass(frozen=True)
class Trace:
    """What one forward pass over T (decoder) tokens shows. Token t's log-probability and alternatives are the
    model's prediction at position t - 1 (row 0 has none: NaN / -1); lens row l is the residual after block l
    put through the final norm and the output head, predicting the token after each position (the last block's
    row equals the model's own output). Encoder-decoder models also fill the `source_*` and cross fields."""

    ids_T: np.ndarray  # int32
    pieces: list[str]  # each token's text, as it reads inside the whole decoded text
    logprob_T: np.ndarray  # float32, NaN at position 0
    top_ids_TxN: np.ndarray  # int32, -1 in row 0
    top_logprobs_TxN: np.ndarray  # float32
    next_top_ids_N: np.ndarray  # the prediction after the last token
    next_top_logprobs_N: np.ndarray
    attention_LxHxTxT: np.ndarray  # float32, one row per query head (GQA/MQA: heads sharing a kv head repeat it)
    residual_LxTxD: np.ndarray  # float32, each block's output (pre-norm stacks: before the final norm)
    residual_norm_LxT: np.ndarray
    lens_top_ids_LxTxN: Optional[np.ndarray] = None
    lens_top_probs_LxTxN: Optional[np.ndarray] = None
    lens_next_rank_LxT: Optional[np.ndarray] = None  # rank of the actual next token (0 = top); -1 at the end
    lens_next_prob_LxT: Optional[np.ndarray] = None  # NaN at the last position
    source_ids_S: Optional[np.ndarray] = None
    source_pieces: Optional[list[str]] = None
    encoder_attention_LxHxSxS: Optional[np.ndarray] = None
    cross_attention_LxHxTxS: Optional[np.ndarray] = None

    @property
    def num_layers(self) -> int:
        return self.attention_LxHxTxT.shape[0]

    @property
    def num_heads(self) -> int:
        return self.attention_LxHxTxT.shape[1]


def token_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's text as it reads inside the decoding of all of them (a SentencePiece word start keeps its
    space), so that the pieces join to the decoded text. A token that ends inside a multi-byte character shows
    nothing; the one that completes it shows the character."""
    pieces, before = [], ""
    for t in range(len(ids)):
        text = tokenizer.decode(ids[:t + 1])
        piece = text[len(before):] if text.startswith(before) else tokenizer.piece(ids[t])
        if t + 1 < len(ids):
            piece = piece.rstrip("\ufffd")  # perhaps a character the next tokens complete
        pieces.append(piece)
        before += piece
    return pieces


class Tracer:
    """Traces prompts of a loaded run, compiled once per prompt bucket (the engine's power-of-two lengths)."""

    def __init__(self, loaded: LoadedModel):
        self.loaded, self.cfg = loaded, loaded.config.model
        self.tokenizer = loaded.tokenizer
        self.encoder_decoder = self.cfg.architecture == "encoder_decoder"
        self.context = self.cfg.max_seq_len
        self.buckets = prompt_buckets(self.context)
        self.traces = 0  # compilations
        self._lock = threading.Lock()
        self._forward = jax.jit(self._forward_fn, static_argnames=("top_k", "with_lens"))

    def encode(self, prompt: str | Sequence[int], param: str = "prompt") -> list[int]:
        """Token ids of a text or of given ids, checked against the vocabulary and the context."""
        if isinstance(prompt, str):
            if not prompt:
                raise InspectError(f"{param} is empty: expected 1 to {self.context} tokens of text")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
            bad = [i for i in ids if not 0 <= i < self.tokenizer.vocab_size]
            if bad:
                raise InspectError(f"{param}: token id {bad[0]} is outside the tokenizer's vocabulary "
                                   f"[0, {self.tokenizer.vocab_size})")
        if not 1 <= len(ids) <= self.context:
            raise InspectError(f"{param} has {len(ids)} tokens: expected 1 to {self.context} (the model's context)")
        return ids

    def trace(self, prompt: str | Sequence[int], *, top_k: int = 5, lens: bool = True,
              target: str | Sequence[int] | None = None) -> Trace:
        """Trace a prompt. Encoder-decoder models read `prompt` as the source and run the decoder over `target`
        (default: the source's last token, as the engine starts a generation)."""
        if not 1 <= top_k <= 100:
            raise InspectError(f"top_k={top_k} is out of range: expected 1 to 100")
        ids = self.encode(prompt)
        source = None
        if self.encoder_decoder:
            source, ids = ids, self.encode(target, "target") if target is not None else ids[-1:]
        elif target is not None:
            raise InspectError("target is for encoder-decoder models; this model is decoder-only")
        src_1xS = None if source is None else self._padded(source)
        with self._lock:  # one caller compiles a bucket; the others reuse it
            out = jax.device_get(self._forward(self.loaded.params, self._padded(ids), len(ids), src_1xS,
                                               len(source or ()), top_k=top_k, with_lens=lens))
        return self._trace_from(out, ids, source, top_k)

    def _padded(self, ids: Sequence[int]) -> np.ndarray:
        bucket = next(n for n in self.buckets if n >= len(ids))
        ids_1xL = np.zeros((1, bucket), np.int32)
        ids_1xL[0, :len(ids)] = ids
        return ids_1xL

    def _forward_fn(self, params, ids_1xL, length, src_1xS, src_length, *, top_k: int, with_lens: bool) -> dict:
        self.traces += 1
        model, cfg = self.loaded.model, self.cfg
        variables = {"params": params}
        is_block = lambda module, method: isinstance(module, Block) and method == "__call__"  # noqa: E731
        kwargs = dict(return_weights=True, capture_intermediates=is_block, mutable=["intermediates"])
        if self.encoder_decoder:
            src_valid_1xS = jnp.arange(src_1xS.shape[1])[None] < src_length
            logits_1xLxV, state = model.apply(variables, src_1xS, ids_1xL, src_valid_BxS=src_valid_1xS, **kwargs)
        else:
            logits_1xLxV, state = model.apply(variables, ids_1xL, **kwargs)
        seen = state["intermediates"]
        layers = [seen["decoder"][f"layer_{i}"] for i in range(cfg.decoder_layers)]
        # Per layer: a block's output (x, cache, cross cache) and its attention weights [1, H, L, L].
        resid_layers_LxD = jnp.stack([layer["__call__"][0][0][0] for layer in layers]).astype(jnp.float32)
        out = {"attention": jnp.stack([layer["self_attention"]["attention_weights"][0][0] for layer in layers]),
               "residual": resid_layers_LxD, "residual_norm": jnp.linalg.norm(resid_layers_LxD, axis=-1)}
        if self.encoder_decoder:
            out["cross_attention"] = jnp.stack([layer["cross_attention"]["attention_weights"][0][0]
                                                for layer in layers])
            out["encoder_attention"] = jnp.stack(
                [seen["encoder"][f"layer_{i}"]["self_attention"]["attention_weights"][0][0]
                 for i in range(cfg.encoder_layers)])
        L = ids_1xL.shape[1]
        next_ids_L = jnp.where(jnp.arange(L) + 1 < length, jnp.roll(ids_1xL[0], -1), 0)
        out.update(_predictions(logits_1xLxV[0], next_ids_L, top_k, self.tokenizer.vocab_size, "model"))
        if with_lens:
            final_norm = make_norm(cfg, "final_norm") if cfg.norm_position == "pre" else None
            norm_params = params["decoder"].get("final_norm")

            def lens_row(resid_LxD):
                h_LxD = resid_LxD if final_norm is None else final_norm.apply({"params": norm_params}, resid_LxD)
                logits_LxV = model.apply(variables, h_LxD[None], method=lambda m, h: m.embedder.logits(h))[0]
                return _predictions(logits_LxV, next_ids_L, top_k, self.tokenizer.vocab_size, "lens")

            out.update(lax.map(lens_row, resid_layers_LxD))
        return out

    def _trace_from(self, out: dict, ids: list[int], source: Optional[list[int]], top_k: int) -> Trace:
        T = len(ids)
        logprob_T = np.full(T, np.nan, np.float32)
        logprob_T[1:] = out["model_next_logprob"][:T - 1]
        top_ids = np.full((T, top_k), -1, np.int32)
        top_logprobs = np.full((T, top_k), np.nan, np.float32)
        top_ids[1:], top_logprobs[1:] = out["model_top_ids"][:T - 1], out["model_top_logprobs"][:T - 1]
        lens = {}
        if "lens_top_ids" in out:
            rank = out["lens_next_rank"][:, :T].astype(np.int32)
            prob = np.exp(out["lens_next_logprob"][:, :T])
            rank[:, T - 1], prob[:, T - 1] = -1, np.nan
            lens = dict(lens_top_ids_LxTxN=out["lens_top_ids"][:, :T],
                        lens_top_probs_LxTxN=np.exp(out["lens_top_logprobs"][:, :T]),
                        lens_next_rank_LxT=rank, lens_next_prob_LxT=prob)
        extra = {}
        if source is not None:
            S = len(source)
            extra = dict(source_ids_S=np.asarray(source, np.int32), source_pieces=token_pieces(self.tokenizer, source),
                         encoder_attention_LxHxSxS=out["encoder_attention"][:, :, :S, :S],
                         cross_attention_LxHxTxS=out["cross_attention"][:, :, :T, :S])
        return Trace(
            ids_T=np.asarray(ids, np.int32), pieces=token_pieces(self.tokenizer, ids), logprob_T=logprob_T,
            top_ids_TxN=top_ids, top_logprobs_TxN=top_logprobs,
            next_top_ids_N=out["model_top_ids"][T - 1], next_top_logprobs_N=out["model_top_logprobs"][T - 1],
            attention_LxHxTxT=out["attention"][:, :, :T, :T], residual_LxTxD=out["residual"][:, :T],
            residual_norm_LxT=out["residual_norm"][:, :T], **lens, **extra)


def _predictions(logits_LxV: jax.Array, next_ids_L: jax.Array, top_k: int, decodable: int, prefix: str) -> dict:
    """Top-k of each position's distribution (among the ids the tokenizer can decode), and the log-probability
    and rank of the token that actually comes next."""
    # Top-k, the next token's value and its rank are read from the logits themselves (the same order as the
    # log-probabilities) and only the picked values are normalised: no [L, V] log-softmax is materialised, which
    # halves the logit lens's time (12 layers x L x 50,257 for GPT-2 small).
    logits_LxV = logits_LxV.astype(jnp.float32)
    logsumexp_Lx1 = jax.nn.logsumexp(logits_LxV, axis=-1, keepdims=True)
    top_logits_LxN, top_ids_LxN = lax.top_k(logits_LxV[:, :decodable], top_k)
    next_logit_L = jnp.take_along_axis(logits_LxV, next_ids_L[:, None], axis=-1)[:, 0]
    return {f"{prefix}_top_ids": top_ids_LxN.astype(jnp.int32),
            f"{prefix}_top_logprobs": top_logits_LxN - logsumexp_Lx1,
            f"{prefix}_next_logprob": next_logit_L - logsumexp_Lx1[:, 0],
            f"{prefix}_next_rank": jnp.sum(logits_LxV > next_logit_L[:, None], axis=-1)}


def trace(loaded: LoadedModel, prompt: str | Sequence[int], *, top_k: int = 5, lens: bool = True,
          target: str | Sequence[int] | None = None) -> Trace:
    """Trace one prompt (compiling for its bucket); keep a `Tracer` to trace many without recompiling."""
    return Tracer(loaded).trace(prompt, top_k=top_k, lens=lens, target=target)
