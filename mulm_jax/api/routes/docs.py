"""`GET /openapi.json`: every route of the app, described from its docstring and its `@endpoint` contract."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mulm_jax
from mulm_jax.api.openapi import describe


def routes(ctx) -> list[Route]:
    async def openapi(request: Request) -> JSONResponse:
        """This description of the API (OpenAPI 3.1)."""
        return JSONResponse(
            describe(request.app.routes, title="mulm_jax API", version=mulm_jax.__version__, secured=ctx.secured)
        )

    return [Route("/openapi.json", openapi, methods=["GET"])]
