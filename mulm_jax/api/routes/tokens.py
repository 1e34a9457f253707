"""Tokens and embeddings: tokenize, detokenize, and mean-pooled final hidden states."""

from __future__ import annotations

import base64
from typing import Annotated, Literal, Union

import anyio
import numpy as np
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.registry import MODEL_ERRORS
from mulm_jax.api.schemas import ApiModel, Text, TokenId, TokenIds, one_of
from mulm_jax.infer import InferenceError

MAX_INPUTS = 256
EMBEDDING_INPUT = f"a string, an array of token ids, or an array of 1 to {MAX_INPUTS} of either"


class Tokenize(ApiModel):
    model: str
    prompt: str


class Tokenized(BaseModel):
    model: str
    tokens: list[int]
    count: int
    max_model_len: int  # the model's context, in tokens


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


def routes(ctx) -> list[Route]:
    @endpoint(body=Tokenize, response=Tokenized, errors=MODEL_ERRORS)
    async def tokenize(request: Request, body: Tokenize) -> JSONResponse:
        """Text to token ids with a model's tokenizer."""
        served = ctx.models.get(body.model)
        ids = served.encode(body.prompt, "prompt")
        return JSONResponse(
            Tokenized(model=served.id, tokens=ids, count=len(ids), max_model_len=served.engine.max_len).model_dump()
        )

    @endpoint(body=Detokenize, response=Detokenized, errors=MODEL_ERRORS)
    async def detokenize(request: Request, body: Detokenize) -> JSONResponse:
        """Token ids to text with a model's tokenizer."""
        served = ctx.models.get(body.model)
        ids = _token_ids(body.tokens, "tokens", served.engine.vocab_size)
        return JSONResponse(Detokenized(model=served.id, prompt=served.loaded.tokenizer.decode(ids)).model_dump())

    @endpoint(body=Embed, response=Embeddings, errors=MODEL_ERRORS)
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
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
