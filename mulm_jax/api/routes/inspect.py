"""Inspection: POST /v1/inspect traces a prompt through a served model and returns its tokens, attention, logit lens
and head roles as JSON (what the web lab draws, and `inspect --json` prints); /v1/inspect/activations returns named
activations (with heads ablated), /v1/inspect/ablate, /patch and /attribute the interventions' tables, and
/v1/inspect/embeddings the embedding space (nearest tokens, analogies, PCA of the table and of the residual stream)."""

from __future__ import annotations

import threading
from typing import Annotated, Callable, Literal, Optional, Union

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.registry import MODEL_ERRORS, ServedModel
from mulm_jax.api.schemas import ApiModel, Int, Text, TokenIds, one_of
from mulm_jax.inspect import embedding_space, interventions
from mulm_jax.inspect.heads import head_roles
from mulm_jax.inspect.report import (
    PARTS,
    ablation_json,
    activations_json,
    PROJECTION_LIMIT,
    attribution_json,
    embeddings_json,
    patch_json,
    tokens_json,
    trace_json,
)
from mulm_jax.inspect.trace import InspectError, Tracer, greedy_target

MAX_TOP_K = 20
Part = Literal[PARTS]


Prompt = Annotated[Union[Text, TokenIds], one_of("a non-empty string or an array of token ids")]


class Inspect(ApiModel):
    model: str
    prompt: Prompt
    include: Annotated[
        Union[Part, Annotated[list[Part], Field(min_length=1)]], one_of(f"some of {', '.join(PARTS)}")
    ] = Field(None, description="the parts (default: all)")
    top_k: Int = Field(5, ge=1, le=MAX_TOP_K, description="alternatives per position")
    target: Optional[Prompt] = Field(
        None,
        description="encoder-decoder models: the decoder's tokens, the prompt being "
        "the source (default: for one trained on pairs, its greedy "
        "output; else as a completion reads the prompt)",
    )


Answer = Annotated[Union[Text, Int], one_of("a string of one token or a token id")]


class HeadRef(ApiModel):
    layer: Int = Field(ge=0)
    head: Int = Field(ge=0)


class Activations(ApiModel):
    model: str
    prompt: Prompt
    target: Optional[Prompt] = Field(
        None,
        description="encoder-decoder models: the decoder's tokens, the prompt being "
        "the source (default: as a completion reads the prompt, its "
        "last token the decoder's first)",
    )
    names: Annotated[list[Text], Field(min_length=1)] = Field(
        None, description="activation names or globs (default: every one); the answer's `names` lists them all"
    )
    position: Int = Field(None, description="only this token of each name's T axis (negative: from the end)")
    ablate: list[HeadRef] = Field([], description="self-attention heads to zero-ablate during the pass")


class Ablate(ApiModel):
    model: str
    prompt: Prompt
    token: Answer = Field(None, description="the token whose log-probability is followed (default: the prediction)")
    position: Int = Field(-1, description="the position after which it is predicted (default: the last)")
    mode: Literal[interventions.MODES] = Field("zero", description="zero, or the head's mean over the prompt")


class Patch(ApiModel):
    model: str
    clean: Prompt
    corrupt: Prompt
    token: Answer = Field(None, description="the token followed (default: the clean run's prediction)")


class Attribute(ApiModel):
    model: str
    prompt: Prompt
    token: Answer = Field(None, description="the token whose logit is split (default: the prediction)")
    position: Int = Field(-1, description="the position whose logit is split (default: the last)")


class Embeddings(ApiModel):
    model: str
    token: Answer = Field(None, description="the token whose nearest tokens are listed (its text or id)")
    prompt: Optional[Prompt] = Field(
        None, description="instead of a token: the nearest tokens to this prompt's residual stream at layer, position"
    )
    layer: Int = Field(None, ge=0, description="0 (the embeddings) to L (the last block's output, the default)")
    position: Int = Field(-1, description="the residual's position (negative: from the end)")
    analogy: Annotated[list[Answer], Field(min_length=3, max_length=3)] = Field(
        None, description="[a, b, c]: the tokens nearest to a - b + c, other than a, b and c"
    )
    top_k: Int = Field(10, ge=1, le=embedding_space.MAX_TOP_K, description="nearest tokens listed")
    table: Literal[embedding_space.TABLES] = Field("input", description="the token embedding or the output head")
    projection: bool = Field(True, description="the PCA of the table (and of the prompt's residual at each layer)")
    limit: Int = Field(
        PROJECTION_LIMIT,
        ge=0,
        le=100_000,
        description="table points in the projection: the first `limit` ordinary ids, and every id the answer names",
    )


def routes(ctx) -> list[Route]:
    tracers: dict[int, Tracer] = {}  # by id of the served model: one compiled tracer each, made on first use
    spaces: dict[tuple[int, str], embedding_space.EmbeddingSpace] = {}  # by served model and table
    lock = threading.Lock()

    def opened(model: str) -> tuple[ServedModel, Tracer]:
        """The served model of that id (404 otherwise) and its tracer, made on first use."""
        served = ctx.models.get(model)
        with lock:
            key = id(served.loaded)
            if key not in tracers:
                tracers[key] = Tracer(served.loaded)
            return served, tracers[key]

    def checked(tracer: Tracer, prompt, param: str = "prompt") -> list[int]:
        """A prompt's ids, within the server's inspection limit."""
        try:
            ids = tracer.encode(prompt, param)
        except ValueError as e:  # InspectError, or the tokenizer's DataError for a character it does not know
            raise ApiError(400, str(e), param=param, code="invalid_value") from None
        limit = ctx.settings.inspect_max_tokens
        if len(ids) > limit:
            raise ApiError(
                400,
                f"{param} has {len(ids)} tokens; this server inspects at most {limit} (serve.inspect_max_tokens)",
                param=param,
                code="prompt_too_long",
            )
        return ids

    async def answer(served, compute: Callable[[], dict], param: str, obj: str) -> JSONResponse:
        try:
            parts = await anyio.to_thread.run_sync(compute)
        except InspectError as e:
            raise ApiError(400, str(e), param=e.param or param, code="invalid_value") from None
        cfg = served.loaded.config.model
        return JSONResponse(
            {
                "object": obj,
                "model": served.id,
                "architecture": cfg.architecture,
                "num_layers": cfg.decoder_layers,
                "num_heads": cfg.num_heads,
                "num_kv_heads": cfg.kv_heads,
                "context_length": cfg.max_seq_len,
                **parts,
            }
        )

    @endpoint(body=Inspect, errors=MODEL_ERRORS, scope="inspect")
    async def inspect(request: Request, body: Inspect) -> JSONResponse:
        """Trace a prompt through a model: tokens with log-probabilities and alternatives, attention weights
        [layers][heads][T][T], the logit lens and head roles."""
        served, tracer = opened(body.model)
        include = (body.include,) if isinstance(body.include, str) else tuple(body.include or PARTS)
        ids = checked(tracer, body.prompt)
        if body.target is not None:
            checked(tracer, body.target, "target")

        def run() -> dict:  # a text target is read as the tracer reads it (after the start token of a pairs model)
            decoder = body.target if body.target is not None else greedy_target(served.engine, ids)
            trace = tracer.trace(ids, top_k=body.top_k, lens="lens" in include, target=decoder)
            roles = head_roles(tracer, trace.attention_LxHxTxT) if "heads" in include else None
            return trace_json(trace, served.loaded.tokenizer.piece, include, roles)

        return await answer(served, run, "prompt", "inspection")

    @endpoint(body=Activations, errors=MODEL_ERRORS, scope="inspect")
    async def activations(request: Request, body: Activations) -> JSONResponse:
        """Named activations of one forward pass (TransformerLens-style names: blocks.0.attn.pattern, ...), each
        with its shape letters, shape and values; with `position`, one token's; with `ablate`, heads zeroed."""
        served, tracer = opened(body.model)
        ids = checked(tracer, body.prompt)
        target = None if body.target is None else checked(tracer, body.target, "target")

        def run() -> dict:
            try:
                edits = interventions.head_edits(tracer, [(h.layer, h.head) for h in body.ablate])
            except InspectError as e:
                raise InspectError(str(e), f"ablate.{e.param}") from None
            cache = tracer.run_with_cache(ids, body.names, target=target, edits=edits)
            position = None if body.position is None else interventions.check_position(body.position, len(cache.ids_T))
            return {
                **tokens_json(cache),
                "position": position,
                "names": tracer.names,
                "activations": activations_json(cache, position),
            }

        return await answer(served, run, "names", "activations")

    @endpoint(body=Ablate, errors=MODEL_ERRORS, scope="inspect")
    async def ablate(request: Request, body: Ablate) -> JSONResponse:
        """Each self-attention head ablated in turn: the change in the log-probability of the next token."""
        served, tracer = opened(body.model)
        ids = checked(tracer, body.prompt)
        return await answer(
            served,
            lambda: ablation_json(
                interventions.ablate_each_head(tracer, ids, token=body.token, position=body.position, mode=body.mode),
                tracer,
            ),
            "position",
            "ablation",
        )

    @endpoint(body=Patch, errors=MODEL_ERRORS, scope="inspect")
    async def patch(request: Request, body: Patch) -> JSONResponse:
        """Activation patching: each layer's residual input at each position taken from the clean prompt's run into
        the corrupt one's, and the log-probability of the clean prediction after the last token."""
        served, tracer = opened(body.model)
        clean, corrupt = checked(tracer, body.clean, "clean"), checked(tracer, body.corrupt, "corrupt")
        return await answer(
            served,
            lambda: patch_json(interventions.patch_residual(tracer, clean, corrupt, token=body.token), tracer),
            "corrupt",
            "patching",
        )

    @endpoint(body=Attribute, errors=MODEL_ERRORS, scope="inspect")
    async def attribute(request: Request, body: Attribute) -> JSONResponse:
        """Direct logit attribution: each head's and MLP's share of one token's logit, through the final norm."""
        served, tracer = opened(body.model)
        ids = checked(tracer, body.prompt)
        return await answer(
            served,
            lambda: attribution_json(
                interventions.logit_attribution(tracer, ids, token=body.token, position=body.position), tracer
            ),
            "position",
            "attribution",
        )

    @endpoint(body=Embeddings, errors=MODEL_ERRORS, scope="inspect")
    async def embeddings(request: Request, body: Embeddings) -> JSONResponse:
        """The embedding space: the tokens nearest (cosine) to a token, or to the residual stream at a layer and
        position of a prompt; an analogy's; the PCA of the embedding table (points coloured by token class) and of
        the prompt's residual stream at each layer."""
        served, tracer = opened(body.model)
        ids = None if body.prompt is None else checked(tracer, body.prompt)

        def run() -> dict:
            with lock:
                key = (id(served.loaded), body.table)
                if key not in spaces:
                    spaces[key] = embedding_space.EmbeddingSpace(served.loaded, body.table)
                space = spaces[key]
            found = embedding_space.query(
                space,
                tracer,
                token=body.token,
                prompt=ids,
                layer=body.layer,
                position=body.position,
                analogy=body.analogy,
                top_k=body.top_k,
            )
            return embeddings_json(space, found, body.projection, body.limit)

        return await answer(served, run, "token", "embeddings")

    return [
        Route("/v1/inspect", inspect, methods=["POST"]),
        Route("/v1/inspect/activations", activations, methods=["POST"]),
        Route("/v1/inspect/ablate", ablate, methods=["POST"]),
        Route("/v1/inspect/patch", patch, methods=["POST"]),
        Route("/v1/inspect/attribute", attribute, methods=["POST"]),
        Route("/v1/inspect/embeddings", embeddings, methods=["POST"]),
    ]
