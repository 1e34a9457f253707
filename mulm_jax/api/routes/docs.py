"""`GET /openapi.json`: every route of the app, described from its endpoint's docstring.

The docstring's first line is the summary; YAML after a `---` line (as Starlette's schema generator reads it)
adds OpenAPI detail such as a request body.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.schemas import BaseSchemaGenerator

import mulm_jax


class _Schema(BaseSchemaGenerator):
    def get_schema(self, routes: list) -> dict:
        paths: dict = {}
        for endpoint in self.get_endpoints(routes):
            doc = (endpoint.func.__doc__ or "").strip()
            summary = doc.split("\n", 1)[0].strip() if doc and not doc.startswith("---") else ""
            operation = {"summary": summary, **(self.parse_docstring(endpoint.func) if "---" in doc else {})}
            params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                      for p in _path_params(endpoint.path)]
            if params:
                operation.setdefault("parameters", params)
            operation.setdefault("responses", {"200": {"description": "OK"}})
            paths.setdefault(endpoint.path, {})[endpoint.http_method] = operation
        return {"openapi": "3.0.3", "info": {"title": "mulm_jax API", "version": mulm_jax.__version__},
                "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
                "security": [{"bearer": []}], "paths": paths}


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def routes(ctx) -> list[Route]:
    generator = _Schema()

    async def openapi(request: Request) -> JSONResponse:
        """This description of the API."""
        return JSONResponse(generator.get_schema(request.app.routes))

    return [Route("/openapi.json", openapi, methods=["GET"])]
