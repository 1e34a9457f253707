"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


def routes(ctx) -> list[Route]:
    async def healthz(request: Request) -> JSONResponse:
        """The process is alive."""
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        """Every model named at start-up is loaded and compiled (503 until then, or when one failed)."""
        models = [m.id for m in ctx.models.all()]
        if ctx.models.ready:
            return JSONResponse({"status": "ready", "models": models})
        status = "failed" if ctx.models.startup_errors else "loading"
        return JSONResponse({"status": status, "models": models, "errors": ctx.models.startup_errors},
                            status_code=503)

    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests, latency, time to first token, tokens, queue, slots, jobs."""
        return PlainTextResponse(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]
