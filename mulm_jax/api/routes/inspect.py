"""Inspection: POST /v1/inspect traces a prompt through a served model and returns its tokens, attention, logit lens
and head roles as JSON (what the web lab draws, and `inspect --json` prints)."""

from __future__ import annotations

import threading
from typing import Annotated, Literal, Union

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.registry import MODEL_ERRORS
from mulm_jax.api.schemas import ApiModel, Int, Text, TokenIds, one_of
from mulm_jax.inspect.heads import head_roles
from mulm_jax.inspect.report import PARTS, trace_json
from mulm_jax.inspect.trace import InspectError, Tracer

MAX_TOP_K = 20
Part = Literal[PARTS]


class Inspect(ApiModel):
    model: str
    prompt: Annotated[Union[Text, TokenIds], one_of("a non-empty string or an array of token ids")]
    include: Annotated[Union[Part, Annotated[list[Part], Field(min_length=1)]],
                       one_of(f"some of {', '.join(PARTS)}")] = Field(None, description="the parts (default: all)")
    top_k: Int = Field(5, ge=1, le=MAX_TOP_K, description="alternatives per position")


def routes(ctx) -> list[Route]:
    tracers: dict[int, Tracer] = {}  # by id of the served model: one compiled tracer each, made on first use
    lock = threading.Lock()

    def tracer_for(served) -> Tracer:
        with lock:
            key = id(served.loaded)
            if key not in tracers:
                tracers[key] = Tracer(served.loaded)
            return tracers[key]

    @endpoint(body=Inspect, errors=MODEL_ERRORS)
    async def inspect(request: Request, body: Inspect) -> JSONResponse:
        """Trace a prompt through a model: tokens with log-probabilities and alternatives, attention weights
        [layers][heads][T][T], the logit lens and head roles."""
        settings = ctx.settings
        served = ctx.models.get(body.model)
        include = (body.include,) if isinstance(body.include, str) else tuple(body.include or PARTS)
        tracer = tracer_for(served)
        try:
            ids = tracer.encode(body.prompt)
        except ValueError as e:  # InspectError, or the tokenizer's DataError for a character it does not know
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        if len(ids) > settings.inspect_max_tokens:
            raise ApiError(400, f"prompt has {len(ids)} tokens; this server inspects at most "
                                f"{settings.inspect_max_tokens} (serve.inspect_max_tokens)", param="prompt",
                           code="prompt_too_long")

        def run() -> dict:
            trace = tracer.trace(ids, top_k=body.top_k, lens="lens" in include)
            roles = head_roles(tracer, trace.attention_LxHxTxT) if "heads" in include else None
            return trace_json(trace, served.loaded.tokenizer.piece, include, roles)

        try:
            parts = await anyio.to_thread.run_sync(run)
        except InspectError as e:
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        cfg = served.loaded.config.model
        return JSONResponse({"object": "inspection", "model": served.id, "architecture": cfg.architecture,
                             "num_kv_heads": cfg.kv_heads, "context_length": cfg.max_seq_len, **parts})

    return [Route("/v1/inspect", inspect, methods=["POST"])]
