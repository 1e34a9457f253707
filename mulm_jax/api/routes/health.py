"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from mulm_jax.api.openapi import endpoint


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed"]
    models: list[str]  # the ids of the models served so far
    errors: list[str] = []  # `RUN_DIR: why` for each model named at start-up that failed to load


def routes(ctx) -> list[Route]:
    @endpoint(response=Health)
    async def healthz(request: Request) -> JSONResponse:
        """The process is alive."""
        return JSONResponse(Health().model_dump())

    @endpoint(status=(200, 503), response=Readiness)
    async def readyz(request: Request) -> JSONResponse:
        """Every model named at start-up is loaded and compiled (503 until then, or when one failed)."""
        models = [m.id for m in ctx.models.all()]
        if ctx.models.ready:
            return JSONResponse(Readiness(status="ready", models=models).model_dump(exclude={"errors"}))
        status = "failed" if ctx.models.startup_errors else "loading"
        return JSONResponse(
            Readiness(status=status, models=models, errors=ctx.models.startup_errors).model_dump(), status_code=503
        )

    @endpoint(media_types=("text/plain",))
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests, latency, time to first token, tokens, queue, slots, jobs."""
        return PlainTextResponse(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
