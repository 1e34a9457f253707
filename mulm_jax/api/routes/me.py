"""`GET /v1/me`: the caller's key as the server knows it (its name, scopes and quotas) and what it uses of them now;
the web lab shows only what the key may do."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.keys import SCOPES
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.quotas import steps_taken


class KeyQuotas(BaseModel):
    """0: no limit."""

    requests_per_minute: int
    tokens_per_minute: int
    max_streams: int
    max_jobs: int
    max_steps: int


class KeyUsage(BaseModel):
    streams: int  # sequences of the key's answers open now: queued, generating or being sent
    jobs: int  # data set and training jobs running now
    steps: int  # the train.steps of the running training jobs, together


class KeyStatus(BaseModel):
    object: str = "key"
    name: Optional[str]  # the key's name, or `key:` and its fingerprint; null on a server without keys
    scopes: list[str]
    quotas: KeyQuotas
    usage: KeyUsage


def routes(ctx) -> list[Route]:
    @endpoint(response=KeyStatus)
    async def me(request: Request) -> JSONResponse:
        """The key's name, scopes and quotas, and what it uses of them now."""
        who = ctx.caller(request)
        running = ctx.jobs.running(who.owner)
        usage = KeyUsage(
            streams=ctx.streams.held(who.client),
            jobs=len(running),
            steps=steps_taken(running),
        )
        scopes = [s for s in SCOPES if who.has(s)]
        return JSONResponse(
            KeyStatus(name=who.owner, scopes=scopes, quotas=KeyQuotas(**who.quotas.body()), usage=usage).model_dump()
        )

    return [Route("/v1/me", me, methods=["GET"])]
