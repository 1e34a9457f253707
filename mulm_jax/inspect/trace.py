"""Forward passes of a loaded run, read through the model's own hook points (nn.hooks), never a second copy of the
forward pass: a trace (tokens and their log-probabilities, attention weights, the residual stream after each block,
the logit lens) and any named activations (`run_with_cache`), with edits applied during the pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.infer.buckets import CompiledPerBucket
from mulm_jax.infer.loading import InferenceError, LoadedModel
from mulm_jax.inspect.activations import ActivationCache, Edit, Layout
from mulm_jax.nn import hooks
from mulm_jax.nn.blocks import make_norm


class InspectError(InferenceError):
    """A prompt, layer or head that inspection cannot use; the message names the value and the allowed range, and
    `param` the argument (or request field) it came from, where known."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


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


def greedy_target(engine: object, prompt: str | Sequence[int]) -> Optional[str]:
    """For an encoder-decoder trained on pairs (served by `engine`), its greedy output for `prompt` (its source): the
    target a trace shows the cross-attention of; None for other models, whose prompt is traced as it is."""
    from mulm_jax.infer.sampling import SamplingParams

    if engine.loaded.decoder_start is None:
        return None
    room = engine.max_len - len(engine.encode_prompt(prompt, 0))
    return engine.generate(prompt, SamplingParams(max_tokens=max(room, 1), temperature=0.0)).text


def token_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's text as it reads inside the decoding of all of them (a SentencePiece word start keeps its
    space), so that the pieces join to the decoded text. A token that ends inside a multi-byte character shows
    nothing; the one that completes it shows the character."""
    pieces, before = [], ""
    for t in range(len(ids)):
        text = tokenizer.decode(ids[: t + 1])
        piece = text[len(before) :] if text.startswith(before) else tokenizer.piece(ids[t])
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
        self.names = hooks.vocabulary(self.cfg)  # every activation name, with its shape letters
        self.compiled = CompiledPerBucket(self.context)  # called from the server's threads
        self._forward = self.compiled.jit(self._forward_fn, static_argnames=("top_k", "with_lens"))
        self._activations = self.compiled.jit(self._activations_fn, static_argnames=("names", "with_logprobs"))

    @property
    def traces(self) -> int:
        """Compilations so far."""
        return self.compiled.compilations

    def encode(self, prompt: str | Sequence[int], param: str = "prompt") -> list[int]:
        """Token ids of a text or of given ids, checked against the vocabulary and the context."""
        if isinstance(prompt, str):
            if not prompt:
                raise InspectError(f"{param} is empty: expected 1 to {self.context} tokens of text", param)
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
            bad = [i for i in ids if not 0 <= i < self.tokenizer.vocab_size]
            if bad:
                raise InspectError(
                    f"{param}: token id {bad[0]} is outside the tokenizer's vocabulary "
                    f"[0, {self.tokenizer.vocab_size})",
                    param,
                )
        if not 1 <= len(ids) <= self.context:
            raise InspectError(
                f"{param} has {len(ids)} tokens: expected 1 to {self.context} (the model's context)", param
            )
        return ids

    def trace(
        self,
        prompt: str | Sequence[int],
        *,
        top_k: int = 5,
        lens: bool = True,
        target: str | Sequence[int] | None = None,
    ) -> Trace:
        """Trace a prompt. Encoder-decoder models read `prompt` as the source and run the decoder over `target`; without
        a target, as the engine reads a generation prompt: its last token starts the decoder, the others are the
        source."""
        if not 1 <= top_k <= 100:
            raise InspectError(f"top_k={top_k} is out of range: expected 1 to 100")
        ids, source = self.sequences(prompt, target)
        src_1xS = None if source is None else self.compiled.pad(source)
        out = jax.device_get(
            self._forward(
                self.loaded.params,
                self.compiled.pad(ids),
                len(ids),
                src_1xS,
                len(source or ()),
                top_k=top_k,
                with_lens=lens,
            )
        )
        return self._trace_from(out, ids, source, top_k)

    def run_with_cache(
        self,
        prompt: str | Sequence[int],
        names: Sequence[str] | None = None,
        *,
        target: str | Sequence[int] | None = None,
        edits: Optional[Mapping[str, Edit]] = None,
    ) -> ActivationCache:
        """The activations `names` (exact names or globs, default: every one) of one forward pass over the prompt,
        with `edits` (name -> Edit) applied during it; only the names asked for are kept in memory. Encoder-decoder
        models read `prompt` and `target` as `trace` does."""
        ids, source = self.sequences(prompt, target)
        chosen = self.resolve(self.names if names is None else names)
        rows = self.run_batch(ids, source, chosen, {} if edits is None else {n: [e] for n, e in edits.items()})
        arrays = {name: value[0] for name, value in rows.items()}
        return ActivationCache(
            arrays,
            {name: self.names[name] for name in chosen},
            np.asarray(ids, np.int32),
            token_pieces(self.tokenizer, ids),
            None if source is None else np.asarray(source, np.int32),
            None if source is None else token_pieces(self.tokenizer, source),
        )

    def sequences(
        self, prompt: str | Sequence[int], target: str | Sequence[int] | None = None
    ) -> tuple[list[int], Optional[list[int]]]:
        """The decoder's token ids and (encoder-decoder models) the source's, checked. An encoder-decoder trained on
        pairs reads the prompt as its source and starts its decoder from its start token, which a target given as
        text follows (a target of ids is the decoder's input as given)."""
        ids = self.encode(prompt)
        start = self.loaded.decoder_start
        if self.encoder_decoder:
            if target is not None:
                decoder = self.encode(target, "target")
                return ([start] + decoder if start is not None and isinstance(target, str) else decoder), ids
            if start is not None:
                return [start], ids
            if len(ids) < 2:
                raise InspectError(
                    "an encoder-decoder model reads a prompt as the engine does, its last token starting "
                    "the decoder and the ones before it the source: expected at least 2 tokens (or a "
                    "target)",
                    "prompt",
                )
            return ids[-1:], ids[:-1]
        if target is not None:
            raise InspectError("target is for encoder-decoder models; this model is decoder-only", "target")
        return ids, None

    def resolve(self, names: Sequence[str]) -> tuple[str, ...]:
        """Activation names from exact names or globs, in forward order; an unknown one lists the valid names."""
        if isinstance(names, str):
            names = [names]
        try:
            return tuple(hooks.matching(names, self.names))
        except ValueError as e:
            raise InspectError(str(e), "names") from None

    def layout(self, ids: Sequence[int], source: Optional[Sequence[int]]) -> Layout:
        cfg = self.cfg
        sizes = dict(D=cfg.d_model, H=cfg.num_heads, K=cfg.kv_heads, Dh=cfg.head_dim, F=cfg.ff_dim, V=cfg.vocab_size)
        return Layout(
            len(ids),
            self.compiled.pad(ids).shape[1],
            len(source or ()),
            0 if source is None else self.compiled.pad(source).shape[1],
            sizes,
        )

    def run_batch(
        self,
        ids: Sequence[int],
        source: Optional[Sequence[int]],
        names: Sequence[str],
        edits: Mapping[str, Sequence[Edit]],
        logprobs_at: Optional[int] = None,
    ) -> dict[str, np.ndarray]:
        """One forward pass over N copies of a sequence, row i edited by edits[name][i] (a list of one edit applies
        to every row): the activations `names` as [N, ...] (unpadded), and with `logprobs_at` a position, the
        next-token log-probabilities there as "logprobs" [N, V]. N is the longest list of edits."""
        unknown = [n for n in edits if n not in self.names]
        if unknown:
            self.resolve(unknown)  # raises, listing the valid names
        layout = self.layout(ids, source)
        N = max([len(e) for e in edits.values()] + [1])

        def stacked(name: str, edit_list: Sequence[Edit], part: str, fill: float) -> np.ndarray:
            rows = [layout.pad_edit(name, self.names[name], getattr(e, part), fill, N) for e in edit_list]
            if len(rows) == 1:
                return rows[0]
            shape = np.broadcast_shapes(*(r.shape[1:] for r in rows))
            return np.concatenate([np.broadcast_to(r, r.shape[:1] + shape) for r in rows])

        try:
            arrays = {
                name: (stacked(name, edit_list, "scale", 1.0), stacked(name, edit_list, "shift", 0.0))
                for name, edit_list in edits.items()
            }
        except ValueError as e:
            raise InspectError(str(e), "edits") from None
        ids_NxL = np.repeat(self.compiled.pad(ids), N, axis=0)
        src_NxS = None if source is None else np.repeat(self.compiled.pad(source), N, axis=0)
        out = jax.device_get(
            self._activations(
                self.loaded.params,
                ids_NxL,
                len(ids),
                src_NxS,
                len(source or ()),
                arrays,
                logprobs_at or 0,
                names=tuple(names),
                with_logprobs=logprobs_at is not None,
            )
        )
        result = {name: layout.unpad(np.asarray(out[name], np.float32), self.names[name]) for name in names}
        if logprobs_at is not None:
            result["logprobs"] = np.asarray(out["logprobs"], np.float32)
        return result

    def _apply(self, params, ids_NxL, length, src_NxS, src_length):
        """The model over padded ids (and source): logits [N, L, V]; within a hooks block, the sown activations."""
        variables = {"params": params}
        if self.encoder_decoder:
            src_valid_NxS = jnp.arange(src_NxS.shape[1])[None] < src_length
            return self.loaded.model.apply(
                variables, src_NxS, ids_NxL, src_valid_BxS=src_valid_NxS, mutable=[hooks.ACTIVATIONS]
            )
        # The padding marked, so that RoPE scalings that depend on the length see the prompt's, not the bucket's.
        return self.loaded.model.apply(
            variables, ids_NxL, valid_BxT=jnp.arange(ids_NxL.shape[1])[None] < length, mutable=[hooks.ACTIVATIONS]
        )

    def _activations_fn(
        self,
        params,
        ids_NxL,
        length,
        src_NxS,
        src_length,
        edit_arrays,
        logprobs_at,
        *,
        names: tuple[str, ...],
        with_logprobs: bool,
    ) -> dict:
        edits = {
            name: (lambda scale, shift: lambda x: (x * scale + shift).astype(x.dtype))(*arrays)
            for name, arrays in edit_arrays.items()
        }
        with hooks.hooks(keep=set(names), edits=edits):
            logits_NxLxV, state = self._apply(params, ids_NxL, length, src_NxS, src_length)
        out = {name: value.astype(jnp.float32) for name, value in hooks.sown(state.get(hooks.ACTIVATIONS, {})).items()}
        if with_logprobs:  # the position is an argument: one compilation serves every position
            out["logprobs"] = jax.nn.log_softmax(
                jnp.take(logits_NxLxV, logprobs_at, axis=1).astype(jnp.float32), axis=-1
            )
        return out

    def _forward_fn(self, params, ids_1xL, length, src_1xS, src_length, *, top_k: int, with_lens: bool) -> dict:
        model, cfg = self.loaded.model, self.cfg
        variables = {"params": params}
        stacked = lambda name, layers, stack="": jnp.stack(  # noqa: E731
            [seen[f"{stack}blocks.{i}.{name}"][0] for i in range(layers)]
        ).astype(jnp.float32)
        keep = {
            f"blocks.{i}.{name}"
            for i in range(cfg.decoder_layers)
            for name in ("resid_post", "attn.pattern", "cross_attn.pattern")
        }
        keep |= {f"encoder.blocks.{i}.attn.pattern" for i in range(cfg.encoder_layers)}
        with hooks.hooks(keep=keep):
            logits_1xLxV, state = self._apply(params, ids_1xL, length, src_1xS, src_length)
        seen = hooks.sown(state[hooks.ACTIVATIONS])
        resid_layers_LxD = stacked("resid_post", cfg.decoder_layers)
        out = {
            "attention": stacked("attn.pattern", cfg.decoder_layers),
            "residual": resid_layers_LxD,
            "residual_norm": jnp.linalg.norm(resid_layers_LxD, axis=-1),
        }
        if self.encoder_decoder:
            out["cross_attention"] = stacked("cross_attn.pattern", cfg.decoder_layers)
            out["encoder_attention"] = stacked("attn.pattern", cfg.encoder_layers, "encoder.")
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
        logprob_T[1:] = out["model_next_logprob"][: T - 1]
        top_ids = np.full((T, top_k), -1, np.int32)
        top_logprobs = np.full((T, top_k), np.nan, np.float32)
        top_ids[1:], top_logprobs[1:] = out["model_top_ids"][: T - 1], out["model_top_logprobs"][: T - 1]
        lens = {}
        if "lens_top_ids" in out:
            rank = out["lens_next_rank"][:, :T].astype(np.int32)
            prob = np.exp(out["lens_next_logprob"][:, :T])
            rank[:, T - 1], prob[:, T - 1] = -1, np.nan
            lens = dict(
                lens_top_ids_LxTxN=out["lens_top_ids"][:, :T],
                lens_top_probs_LxTxN=np.exp(out["lens_top_logprobs"][:, :T]),
                lens_next_rank_LxT=rank,
                lens_next_prob_LxT=prob,
            )
        extra = {}
        if source is not None:
            S = len(source)
            extra = dict(
                source_ids_S=np.asarray(source, np.int32),
                source_pieces=token_pieces(self.tokenizer, source),
                encoder_attention_LxHxSxS=out["encoder_attention"][:, :, :S, :S],
                cross_attention_LxHxTxS=out["cross_attention"][:, :, :T, :S],
            )
        return Trace(
            ids_T=np.asarray(ids, np.int32),
            pieces=token_pieces(self.tokenizer, ids),
            logprob_T=logprob_T,
            top_ids_TxN=top_ids,
            top_logprobs_TxN=top_logprobs,
            next_top_ids_N=out["model_top_ids"][T - 1],
            next_top_logprobs_N=out["model_top_logprobs"][T - 1],
            attention_LxHxTxT=out["attention"][:, :, :T, :T],
            residual_LxTxD=out["residual"][:, :T],
            residual_norm_LxT=out["residual_norm"][:, :T],
            **lens,
            **extra,
        )


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
    return {
        f"{prefix}_top_ids": top_ids_LxN.astype(jnp.int32),
        f"{prefix}_top_logprobs": top_logits_LxN - logsumexp_Lx1,
        f"{prefix}_next_logprob": next_logit_L - logsumexp_Lx1[:, 0],
        f"{prefix}_next_rank": jnp.sum(logits_LxV > next_logit_L[:, None], axis=-1),
    }


def trace(
    loaded: LoadedModel,
    prompt: str | Sequence[int],
    *,
    top_k: int = 5,
    lens: bool = True,
    target: str | Sequence[int] | None = None,
) -> Trace:
    """Trace one prompt (compiling for its bucket); keep a `Tracer` to trace many without recompiling."""
    return Tracer(loaded).trace(prompt, top_k=top_k, lens=lens, target=target)
