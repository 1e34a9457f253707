"""The embedding space of a loaded run: its token embedding table with each token's class (letters, digits,
punctuation, case, word starts), the tokens nearest (by cosine) to a token, to the residual stream at any layer and
position of a prompt, or to an analogy a - b + c, and 2-D projections (PCA) of the table and of a prompt's residual
stream at each layer."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence

import numpy as np

from mulm_jax.infer.loading import LoadedModel
from mulm_jax.inspect.interventions import check_position
from mulm_jax.inspect.trace import InspectError, Tracer

TABLES = ("input", "output")  # the token embedding, or the output head (the same table when tied)
# One colour class per token, the first that applies in this order; `flags` lists every property a token has.
CLASSES = ("byte", "whitespace", "word start", "upper", "lower", "digit", "punctuation", "other")
MAX_TOP_K = 100
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def token_flags(text: str, byte: bool = False) -> list[str]:
    """What a token's text holds: `letter`, `digit`, `punctuation` (Unicode P* or S*), `whitespace`, `upper` /
    `lower` (the case of its first letter), `word_start` (a space, then a letter or digit: SentencePiece's `▁the`,
    GPT-2's `Ġthe`), `byte` (a byte piece `<0xNN>`, or part of a character)."""
    if byte or text == "" or "\ufffd" in text:
        return ["byte"]
    categories = [unicodedata.category(c) for c in text]
    flags = []
    if any(c.startswith("L") for c in categories):
        flags.append("letter")
    if any(c == "Nd" for c in categories):
        flags.append("digit")
    if any(c[0] in "PS" for c in categories):
        flags.append("punctuation")
    if any(ch.isspace() for ch in text):
        flags.append("whitespace")
    first = next((ch for ch in text if unicodedata.category(ch).startswith("L")), None)
    if first is not None and first.isupper():
        flags.append("upper")
    elif first is not None and first.islower():
        flags.append("lower")
    if text[0].isspace() and len(text) > 1 and text[1].isalnum():
        flags.append("word_start")
    return flags


def token_class(flags: Sequence[str]) -> str:
    """The one class (of CLASSES) a token is coloured by: byte, all whitespace, word start, then the case of its
    first letter, digits, punctuation, other."""
    if "byte" in flags:
        return "byte"
    if flags == ["whitespace"]:
        return "whitespace"
    for flag, name in (("word_start", "word start"), ("upper", "upper"), ("lower", "lower"), ("digit", "digit")):
        if flag in flags:
            return name
    return "punctuation" if "punctuation" in flags else "other"


def pca(x_NxD: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The first k principal components of the rows: coordinates [N, k] of the mean-centred rows on them (numpy
    SVD), and each component's explained variance ratio [k]. Each component's sign makes its largest coordinate
    positive; components beyond the rows' rank are zero."""
    centred_NxD = np.asarray(x_NxD, np.float64) - np.mean(x_NxD, axis=0, dtype=np.float64)
    u_NxR, s_R, _ = np.linalg.svd(centred_NxD, full_matrices=False)
    coords_NxR = u_NxR * s_R
    biggest_R = coords_NxR[np.argmax(np.abs(coords_NxR), axis=0), np.arange(coords_NxR.shape[1])]
    coords_NxR *= np.where(biggest_R < 0, -1.0, 1.0)
    total = float(np.sum(s_R**2))
    ratio_R = s_R**2 / total if total > 0 else np.zeros_like(s_R)
    N, R = coords_NxR.shape
    coords_Nxk, ratio_k = np.zeros((N, k)), np.zeros(k)
    coords_Nxk[:, : min(k, R)], ratio_k[: min(k, R)] = coords_NxR[:, :k], ratio_R[:k]
    return coords_Nxk.astype(np.float32), ratio_k.astype(np.float32)


@dataclass(frozen=True)
class Neighbour:
    id: int
    cosine: float


@dataclass(frozen=True)
class ResidualStream:
    """A prompt's residual stream at layers 0 (the embeddings: token plus position, block 0's input) to L (the last
    block's output, before the final norm), each with its own PCA over the prompt's positions."""

    ids_T: np.ndarray
    pieces: list[str]
    resid_LxTxD: np.ndarray  # L + 1 layers
    coords_LxTx2: np.ndarray
    explained_Lx2: np.ndarray


class EmbeddingSpace:
    """A loaded run's token embedding table (`table`: "input", the token embedding, or "output", the output head's
    rows; one table when the embeddings are tied). Only ordinary ids take part: ids the tokenizer has (a model's
    vocabulary may be padded beyond it) other than its pad, unk, bos and eos ids and SentencePiece's control and
    unused pieces."""

    def __init__(self, loaded: LoadedModel, table: str = "input"):
        if table not in TABLES:
            raise InspectError(f"table {table!r} is not one of {', '.join(TABLES)}", "table")
        cfg = loaded.config.model
        self.loaded, self.tokenizer, self.table, self.tied = loaded, loaded.tokenizer, table, cfg.tie_embeddings
        embedder = loaded.params["embedder"]
        if table == "output" and not self.tied:
            table_VxD = np.asarray(embedder["head"]["kernel"], np.float32).T
        else:
            table_VxD = np.asarray(embedder["token"]["embedding"], np.float32)
        self.vocab = self.tokenizer.vocab_size  # training checks that the model has a row for each
        self.table_VxD = table_VxD[: self.vocab]
        special = {self.tokenizer.pad_id, self.tokenizer.unk_id, self.tokenizer.bos_id, self.tokenizer.eos_id}
        sp = getattr(self.tokenizer, "_sp", None)  # SentencePiece: its control and unused pieces are special too
        self.ids_N = np.asarray(
            [
                i
                for i in range(self.vocab)
                if i not in special and not (sp is not None and (sp.is_control(i) or sp.is_unused(i)))
            ],
            np.int32,
        )
        self.pieces = [self.tokenizer.piece(i) for i in range(self.vocab)]
        byte = self.tokenizer.kind == "sentencepiece"
        self.flags = [token_flags(p, byte and _BYTE_PIECE.fullmatch(p) is not None) for p in self.pieces]
        self.classes = [token_class(f) for f in self.flags]
        norms_V = np.linalg.norm(self.table_VxD, axis=-1, keepdims=True)
        self._unit_VxD = self.table_VxD / np.maximum(norms_V, 1e-12)

    def token_id(self, token: str | int, param: str = "token") -> int:
        """An id of the table: an int, a token's text as the tokenizer shows it (`piece`), or a text that encodes
        to exactly one token."""
        if isinstance(token, (int, np.integer)):
            if not 0 <= token < self.vocab:
                raise InspectError(f"{param}: token id {token} is outside the vocabulary [0, {self.vocab})", param)
            return int(token)
        matches = [int(i) for i in self.ids_N if self.pieces[i] == token]
        if matches:
            return matches[0]
        try:
            ids = self.tokenizer.encode(token) if token else []
        except ValueError as e:  # the tokenizer's DataError: a character it does not know
            raise InspectError(f"{param} {token!r}: {e}", param) from None
        if len(ids) != 1:
            raise InspectError(
                f"{param} {token!r} is {len(ids)} tokens for this tokenizer: expected the text of exactly one "
                "token (or an id)",
                param,
            )
        return ids[0]

    def nearest(self, vector_D: np.ndarray, top_k: int = 10, exclude: Sequence[int] = ()) -> list[Neighbour]:
        """The ordinary tokens whose rows have the largest cosine with `vector_D`, largest first (ties: lower id)."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise InspectError(f"top_k={top_k} is out of range: expected 1 to {MAX_TOP_K}", "top_k")
        vector_D = np.asarray(vector_D, np.float32)
        cosine_N = self._unit_VxD[self.ids_N] @ (vector_D / max(float(np.linalg.norm(vector_D)), 1e-12))
        keep_N = ~np.isin(self.ids_N, list(exclude))
        ids_M, cosine_M = self.ids_N[keep_N], cosine_N[keep_N]
        order = np.lexsort((ids_M, -cosine_M))[:top_k]
        return [Neighbour(int(ids_M[i]), float(cosine_M[i])) for i in order]

    def nearest_token(self, token: str | int, top_k: int = 10) -> tuple[int, list[Neighbour]]:
        """A token's id and its nearest other tokens."""
        i = self.token_id(token)
        return i, self.nearest(self.table_VxD[i], top_k, exclude=[i])

    def analogy(self, a: str | int, b: str | int, c: str | int, top_k: int = 10) -> tuple[list[int], list[Neighbour]]:
        """a - b + c of the unit-length rows (word2vec's 3CosAdd: king - man + woman), its nearest tokens other than
        a, b and c; and the three ids."""
        ids = [self.token_id(t, f"analogy.{n}") for t, n in zip((a, b, c), "abc")]
        unit = self._unit_VxD
        return ids, self.nearest(unit[ids[0]] - unit[ids[1]] + unit[ids[2]], top_k, exclude=ids)

    @cached_property
    def projection(self) -> tuple[np.ndarray, np.ndarray]:
        """The PCA of the ordinary ids' rows (in `ids_N` order): coordinates [N, 2] and explained variance [2]."""
        return pca(self.table_VxD[self.ids_N])

    def residual_nearest(
        self, stream: ResidualStream, layer: int, position: int, top_k: int = 10
    ) -> tuple[int, list[Neighbour]]:
        """The position (`position` negative: from the end) and the tokens nearest to the residual stream there at
        `layer` (0: the embeddings, to L: the last block's output)."""
        L, T = stream.resid_LxTxD.shape[:2]
        if not 0 <= layer < L:
            raise InspectError(
                f"layer {layer} is out of range: expected 0 (the embeddings) to {L - 1} (the last block's output)",
                "layer",
            )
        position = check_position(position, T)
        return position, self.nearest(stream.resid_LxTxD[layer, position], top_k)


def residual_stream(tracer: Tracer, prompt: str | Sequence[int]) -> ResidualStream:
    """A prompt's (decoder's) residual stream at every layer, with one PCA per layer over its positions."""
    L = tracer.cfg.decoder_layers
    names = ["blocks.0.resid_pre"] + [f"blocks.{layer}.resid_post" for layer in range(L)]
    cache = tracer.run_with_cache(prompt, names)
    resid_LxTxD = np.stack([cache[name] for name in names])
    projected = [pca(resid_TxD) for resid_TxD in resid_LxTxD]
    return ResidualStream(
        cache.ids_T,
        cache.pieces,
        resid_LxTxD,
        np.stack([coords for coords, _ in projected]),
        np.stack([ratio for _, ratio in projected]),
    )


@dataclass(frozen=True)
class EmbeddingQuery:
    """What `inspect embeddings` and POST /v1/inspect/embeddings answer: the nearest tokens to a token or to the
    residual stream at one layer and position of a prompt, those of an analogy, and the projections."""

    token: Optional[int] = None
    nearest: Optional[list[Neighbour]] = None
    stream: Optional[ResidualStream] = None
    layer: Optional[int] = None
    position: Optional[int] = None
    analogy: Optional[list[int]] = None
    analogy_nearest: Optional[list[Neighbour]] = None


def query(
    space: EmbeddingSpace,
    tracer: Optional[Tracer] = None,
    *,
    token: str | int | None = None,
    prompt: str | Sequence[int] | None = None,
    layer: Optional[int] = None,
    position: int = -1,
    analogy: Optional[Sequence[str | int]] = None,
    top_k: int = 10,
) -> EmbeddingQuery:
    """A token's nearest tokens, or (with a prompt and a tracer) the residual's at `layer` (default: the last,
    L) and `position`; and an analogy's (a, b, c)."""
    if token is not None and prompt is not None:
        raise InspectError("give a token or a prompt (and a layer and position), not both", "token")
    if layer is not None and prompt is None:
        raise InspectError(f"layer {layer} chooses the residual stream of a prompt: give the prompt too", "layer")
    found: dict = {}
    if token is not None:
        found["token"], found["nearest"] = space.nearest_token(token, top_k)
    if prompt is not None:
        stream = residual_stream(tracer, prompt)
        layer = stream.resid_LxTxD.shape[0] - 1 if layer is None else layer
        found.update(stream=stream, layer=layer)
        found["position"], found["nearest"] = space.residual_nearest(stream, layer, position, top_k)
    if analogy is not None:
        if len(analogy) != 3:
            raise InspectError(f"an analogy is 3 tokens a, b, c (a - b + c): got {len(analogy)}", "analogy")
        found["analogy"], found["analogy_nearest"] = space.analogy(*analogy, top_k=top_k)
    return EmbeddingQuery(**found)
