"""Tokens and embeddings: tokenize, detokenize, one text under several tokenizers, and mean-pooled final hidden
states."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Literal, Union

import anyio
import numpy as np
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.paths import confine
from mulm_jax.api.registry import MODEL_ERRORS
from mulm_jax.api.schemas import ApiModel, Text, TokenId, TokenIds, one_of
from mulm_jax.config import ServeConfig
from mulm_jax.data.errors import DataError
from mulm_jax.data.tokenizer import Tokenizer
from mulm_jax.data import tokenizer_compare
from mulm_jax.data.tokenizer_compare import CHAR, Tokenization, load_tokenizer, tokenizer_at
from mulm_jax.infer import InferenceError

MAX_INPUTS = 256
MAX_COMPARED = 4  # tokenizers in one comparison
MAX_COMPARE_CHARS = 4096  # the text compared: its answer has a few hundred bytes a token per tokenizer
EMBEDDING_INPUT = f"a string, an array of token ids, or an array of 1 to {MAX_INPUTS} of either"


class Tokenize(ApiModel):
    model: str
    prompt: str


class Tokenized(BaseModel):
    model: str
    tokens: list[int]
    count: int
    max_model_len: int  # the model's context, in tokens


class CompareTokenizers(ApiModel):
    text: Annotated[str, Field(min_length=1, max_length=MAX_COMPARE_CHARS)]
    tokenizers: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(
            min_length=1,
            max_length=MAX_COMPARED,
            description="each a served model's id (its tokenizer), `char` (the text's own characters), or a path in "
            "the server's runs, data set or data folders (a relative one looked up in each in turn): a run folder, "
            "a data set version folder, a SentencePiece .model file, a Hugging Face tokenizer.json or its folder",
        ),
    ]


class TokenizerComparison(BaseModel):
    text: str
    tokenizers: list[Tokenization]  # in the order asked for


class Detokenize(ApiModel):
    model: str
    tokens: list[TokenId]


class Detokenized(BaseModel):
    model: str
    prompt: str


class Embed(ApiModel):
    model: str
    input: Annotated[
        Union[Text, TokenIds, Annotated[list[Union[Text, TokenIds]], Field(min_length=1, max_length=MAX_INPUTS)]],
        one_of(EMBEDDING_INPUT),
    ]
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes (the openai client's default)"
    )
    user: str = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # base64: of little-endian float32 bytes


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embeddings(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


def _token_ids(value: list[int], param: str, vocab: int) -> list[int]:
    bad = [t for t in value if not 0 <= t < vocab]
    if bad:
        raise ApiError(
            400, f"{param}: token id {bad[0]} is outside the vocabulary [0, {vocab})", param=param, code="invalid_value"
        )
    return value


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """An embedding as OpenAI sends it: a list of numbers, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def tokenizer_path(spec: str, settings: ServeConfig, param: str) -> Path:
    """A tokenizer path inside the runs, data set or data folders (confine: 403 outside them); a relative one is
    the first of them to hold it."""
    roots = [settings.runs_root, settings.datasets_dir, *settings.data_roots]
    if not Path(spec).is_absolute():
        for root in roots:
            path = confine(str(Path(root).resolve() / spec), roots, param=param)
            if path.exists():
                return path
    return confine(spec, roots, param=param)


def routes(ctx) -> list[Route]:
    @endpoint(body=Tokenize, response=Tokenized, errors=MODEL_ERRORS, scope="generate")
    async def tokenize(request: Request, body: Tokenize) -> JSONResponse:
        """Text to token ids with a model's tokenizer."""
        served = ctx.models.get(body.model)
        ids = served.encode(body.prompt, "prompt")
        return JSONResponse(
            Tokenized(model=served.id, tokens=ids, count=len(ids), max_model_len=served.engine.max_len).model_dump()
        )

    @endpoint(body=Detokenize, response=Detokenized, errors=MODEL_ERRORS, scope="generate")
    async def detokenize(request: Request, body: Detokenize) -> JSONResponse:
        """Token ids to text with a model's tokenizer."""
        served = ctx.models.get(body.model)
        ids = _token_ids(body.tokens, "tokens", served.engine.vocab_size)
        return JSONResponse(Detokenized(model=served.id, prompt=served.loaded.tokenizer.decode(ids)).model_dump())

    def compared_tokenizer(spec: str, text: str, param: str) -> Tokenizer:
        served = {m.id: m for m in ctx.models.all()}
        if spec in served:
            return served[spec].loaded.tokenizer
        if spec == CHAR:
            return load_tokenizer(CHAR, text)
        path = tokenizer_path(spec, ctx.settings, param)
        if not path.exists():
            raise ApiError(
                400,
                f"{param}={spec!r} is neither a served model ({', '.join(sorted(served)) or 'none served'}), "
                f"`{CHAR}`, nor a path in the server's runs, data set or data folders",
                param=param,
                code="invalid_value",
            )
        return tokenizer_at(path)

    def comparison(body: CompareTokenizers) -> list[Tokenization]:
        out = []
        for i, spec in enumerate(body.tokenizers):
            param = f"tokenizers[{i}]"
            try:
                out.append(tokenizer_compare.tokenize(compared_tokenizer(spec, body.text, param), body.text, spec))
            except DataError as e:
                raise ApiError(400, f"{param}: {e}", param=param, code="invalid_value") from None
        return out

    @endpoint(body=CompareTokenizers, response=TokenizerComparison, errors=(403,), scope="inspect")
    async def compare_tokenizers(request: Request, body: CompareTokenizers) -> JSONResponse:
        """One text under one to four tokenizers: each one's tokens (id, vocabulary piece, the text it covers and
        its character offsets), characters per token, the words it splits and, for BPE, each piece's merges."""
        compared = await anyio.to_thread.run_sync(comparison, body)
        return JSONResponse(TokenizerComparison(text=body.text, tokenizers=compared).model_dump(mode="json"))

    @endpoint(body=Embed, response=Embeddings, errors=MODEL_ERRORS, scope="generate")
    async def embeddings(request: Request, body: Embed) -> JSONResponse:
        """Embeddings of texts or token ids: the model's final hidden states, mean-pooled (OpenAI's format)."""
        served = ctx.models.get(body.model)
        vocab = served.engine.vocab_size
        raw = body.input
        if isinstance(raw, str) or all(isinstance(t, int) for t in raw):
            raw = [raw]
        inputs = [
            served.encode(x, f"input[{i}]") if isinstance(x, str) else _token_ids(x, f"input[{i}]", vocab)
            for i, x in enumerate(raw)
        ]
        try:
            vectors = await anyio.to_thread.run_sync(lambda: [served.embeddings.embed(ids) for ids in inputs])
        except InferenceError as e:
            raise ApiError(400, str(e), param="input", code="invalid_value") from None
        tokens = sum(len(ids) for ids in inputs)
        data = [Embedding(index=i, embedding=_encoded(v, body.encoding_format)) for i, v in enumerate(vectors)]
        return JSONResponse(
            Embeddings(
                model=served.id, data=data, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
            ).model_dump()
        )

    return [
        Route("/v1/tokenize", tokenize, methods=["POST"]),
        Route("/v1/detokenize", detokenize, methods=["POST"]),
        Route("/v1/tokenizers/compare", compare_tokenizers, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
