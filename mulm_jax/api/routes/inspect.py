"""Inspection: POST /v1/inspect traces a prompt through a served model and returns its tokens, attention, logit lens
and head roles as JSON (what the web lab draws, and `inspect --json` prints)."""

from __future__ import annotations

import threading

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.schemas import read_json
from mulm_jax.inspect.heads import head_roles
from mulm_jax.inspect.report import PARTS, trace_json
from mulm_jax.inspect.trace import InspectError, Tracer

MAX_TOP_K = 20


def routes(ctx) -> list[Route]:
    tracers: dict[int, Tracer] = {}  # by id of the served model: one compiled tracer each, made on first use
    lock = threading.Lock()

    def tracer_for(served) -> Tracer:
        with lock:
            key = id(served.loaded)
            if key not in tracers:
                tracers[key] = Tracer(served.loaded)
            return tracers[key]

    async def inspect(request: Request) -> JSONResponse:
        """Trace a prompt through a model: tokens with log-probabilities and alternatives, attention weights
        [layers][heads][T][T], the logit lens and head roles.
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [model, prompt]
                properties:
                  model: {type: string}
                  prompt: {oneOf: [{type: string, minLength: 1}, {type: array, items: {type: integer}, minItems: 1}]}
                  include: {type: array, items: {type: string, enum: [tokens, attention, lens, heads]},
                            description: "the parts to return (default: all)"}
                  top_k: {type: integer, minimum: 1, maximum: 20, description: "alternatives per position"}
        responses:
          "200": {description: "the trace"}
        """
        settings = ctx.settings
        body = (await read_json(request, settings.max_body_bytes)).only(("model", "prompt", "include", "top_k"))
        served = ctx.models.get(body.string("model"))
        include = body.strings("include", list(PARTS))
        unknown = [part for part in include if part not in PARTS]
        if unknown or not include:
            raise ApiError(400, f"include={include!r}: expected some of {', '.join(PARTS)}", param="include",
                           code="invalid_value")
        top_k = body.integer("top_k", 5, lo=1, hi=MAX_TOP_K)
        prompt = body.raw("prompt")
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            raise ApiError(400, "prompt must be a string or an array of token ids", param="prompt",
                           code="invalid_value")
        tracer = tracer_for(served)
        try:
            ids = tracer.encode(prompt)
        except ValueError as e:  # InspectError, or the tokenizer's DataError for a character it does not know
            raise ApiError(400, str(e), param="prompt", code="invalid_value") from None
        if len(ids) > settings.inspect_max_tokens:
            raise ApiError(400, f"prompt has {len(ids)} tokens; this server inspects at most "
                                f"{settings.inspect_max_tokens} (serve.inspect_max_tokens)", param="prompt",
                           code="prompt_too_long")

        def run() -> dict:
            trace = tracer.trace(ids, top_k=top_k, lens="lens" in include)
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
