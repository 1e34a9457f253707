"""Tokens and embeddings: tokenize, detokenize, and mean-pooled final hidden states."""

from __future__ import annotations

import base64

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.schemas import read_json
from mulm_jax.infer import InferenceError

MAX_INPUTS = 256


def _token_ids(value, param: str, vocab: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ApiError(400, f"{param} must be an array of token ids", param=param, code="invalid_value")
    bad = [t for t in value if not 0 <= t < vocab]
    if bad:
        raise ApiError(400, f"{param}: token id {bad[0]} is outside the vocabulary [0, {vocab})", param=param,
                       code="invalid_value")
    return value


def _encode(served, text: str, param: str) -> list[int]:
    try:
        return served.loaded.tokenizer.encode(text)
    except ValueError as e:  # the tokenizer's DataError: a character it does not know
        raise ApiError(400, f"{param}: {e}", param=param, code="invalid_value") from None


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """An embedding as OpenAI sends it: a list of numbers, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def routes(ctx) -> list[Route]:
    async def tokenize(request: Request) -> JSONResponse:
        """Text to token ids with a model's tokenizer.
        ---
        requestBody:
          content:
            application/json:
              schema:
                type: object
                required: [model, prompt]
                properties: {model: {type: string}, prompt: {type: string}}
        """
        body = (await read_json(request, ctx.settings.max_body_bytes)).only(("model", "prompt"))
        served = ctx.models.get(body.string("model"))
        ids = _encode(served, body.string("prompt"), "prompt")
        return JSONResponse({"model": served.id, "tokens": ids, "count": len(ids),
                             "max_model_len": served.engine.max_len})

    async def detokenize(request: Request) -> JSONResponse:
        """Token ids to text with a model's tokenizer.
        ---
        requestBody:
          content:
            application/json:
              schema:
                type: object
                required: [model, tokens]
                properties: {model: {type: string}, tokens: {type: array, items: {type: integer}}}
        """
        body = (await read_json(request, ctx.settings.max_body_bytes)).only(("model", "tokens"))
        served = ctx.models.get(body.string("model"))
        ids = _token_ids(body.raw("tokens"), "tokens", served.engine.vocab_size)
        return JSONResponse({"model": served.id, "prompt": served.loaded.tokenizer.decode(ids)})

    async def embeddings(request: Request) -> JSONResponse:
        """Embeddings of texts or token ids: the model's final hidden states, mean-pooled (OpenAI's format).
        ---
        requestBody:
          content:
            application/json:
              schema:
                type: object
                required: [model, input]
                properties:
                  model: {type: string}
                  input: {oneOf: [{type: string}, {type: array}]}
                  encoding_format: {type: string, enum: [float, base64], default: float,
                                    description: "base64: little-endian float32 bytes (the openai client's default)"}
        """
        body = (await read_json(request, ctx.settings.max_body_bytes)).only(
            ("model", "input", "encoding_format", "user"))
        served = ctx.models.get(body.string("model"))
        encoding_format = body.string("encoding_format", "float", choices=("float", "base64"))
        raw = body.raw("input")
        vocab = served.engine.vocab_size
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
            raw = [raw]
        if not isinstance(raw, list) or not raw or len(raw) > MAX_INPUTS:
            raise ApiError(400, f"input must be a string, an array of token ids, or an array of 1 to {MAX_INPUTS} "
                                "of either", param="input", code="invalid_value")
        inputs = [_encode(served, x, f"input[{i}]") if isinstance(x, str) else _token_ids(x, f"input[{i}]", vocab)
                  for i, x in enumerate(raw)]
        try:
            vectors = await anyio.to_thread.run_sync(lambda: [served.embeddings.embed(ids) for ids in inputs])
        except InferenceError as e:
            raise ApiError(400, str(e), param="input", code="invalid_value") from None
        tokens = sum(len(ids) for ids in inputs)
        return JSONResponse({"object": "list", "model": served.id,
                             "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding_format)}
                                      for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return [Route("/v1/tokenize", tokenize, methods=["POST"]), Route("/v1/detokenize", detokenize, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"])]
