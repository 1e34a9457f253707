"""The OpenAPI description, generated from the routes: each endpoint's docstring and what `@endpoint` declares.

A route declares its request body as a pydantic model (validated before the endpoint runs, so the schema is what
the code accepts), its answer, the error statuses it can answer and the scope a key needs to call it (the one
place that maps routes to scopes); the statuses every route shares (400 and 413 for a body, 401 without a key, 403
without the scope, 429 past a rate limit) are added here.
"""

from __future__ import annotations

import functools
import http
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pydantic import BaseModel
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.schemas import BaseSchemaGenerator

from mulm_jax.api.auth import PUBLIC_PATHS, needs_key, require
from mulm_jax.api.errors import ErrorBody
from mulm_jax.api.schemas import ApiModel, read_json, validate

REF = "#/components/schemas/{model}"
ANNOTATIONS = ("title", "description", "default", "examples")


@dataclass(frozen=True)
class Operation:
    """What a route takes and answers, beyond its docstring."""

    body: Optional[type[ApiModel]]
    statuses: tuple[int, ...]  # the statuses answered with `response` (the first is the success)
    response: Optional[type[BaseModel]]
    media_types: tuple[str, ...]
    errors: tuple[int, ...]
    params: dict[str, str]  # path parameter -> the pattern it must match (answered 400 otherwise)
    scopes: tuple[str, ...] = ()  # a key needs one of these (keys.SCOPES) to call it; none: any key


UNDECLARED = Operation(None, (200,), None, ("application/json",), (), {})  # a route without @endpoint: 200, JSON


def endpoint(
    *,
    body: Optional[type[ApiModel]] = None,
    status: int | tuple[int, ...] = 200,
    response: Optional[type[BaseModel]] = None,
    media_types: Iterable[str] = ("application/json",),
    errors: Iterable[int] = (),
    params: Optional[dict[str, str]] = None,
    scope: str | tuple[str, ...] = (),
) -> Callable:
    """Declare a route's contract: its request `body`, the `status` (or statuses) it answers with a `response` body
    of `media_types`, the `errors` it can answer (with an ErrorBody), the patterns its path `params` must match, and
    the `scope` (or any of the scopes) a key needs for it (403 otherwise, before the body is read). With `body`, the
    endpoint is called as `endpoint(request, body)` with the request's JSON validated as that model (400 naming the
    field, 413 past the server's body limit)."""
    scopes = (scope,) if isinstance(scope, str) else tuple(scope)
    operation = Operation(
        body,
        (status,) if isinstance(status, int) else status,
        response,
        tuple(media_types),
        tuple(errors),
        params or {},
        scopes,
    )

    def declare(fn: Callable) -> Callable:
        if body is None and not scopes:
            wrapped = fn
        else:

            @functools.wraps(fn)
            async def wrapped(request: Request) -> Any:
                if scopes:
                    require(request, scopes)
                if body is None:
                    return await fn(request)
                data = await read_json(request, request.app.state.ctx.settings.max_body_bytes)
                return await fn(request, validate(body, data))

        wrapped.__openapi__ = operation
        return wrapped

    return declare


def describe(routes: list[BaseRoute], *, title: str, version: str, secured: bool) -> dict:
    """The OpenAPI 3.1 document of `routes`; `secured`: the server has API keys (routes but the public ones need
    one)."""
    components: dict[str, Any] = {}
    components["ErrorBody"] = _schema(ErrorBody, components)
    paths: dict[str, dict] = {}
    for info in BaseSchemaGenerator().get_endpoints(routes):
        operation = _operation(info.path, info.func, components, secured)
        paths.setdefault(info.path, {})[info.http_method] = operation
    document = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _operation(path: str, func: Callable, components: dict, secured: bool) -> dict:
    declared: Operation = getattr(func, "__openapi__", UNDECLARED)
    summary, _, description = (func.__doc__ or "").strip().partition("\n")
    operation: dict[str, Any] = {"summary": summary.strip()}
    if description.strip():
        operation["description"] = " ".join(description.split())
    params = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    if params:
        operation["parameters"] = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {"type": "string", **({"pattern": declared.params[p]} if p in declared.params else {})},
            }
            for p in params
        ]
    if declared.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _nullable_optionals(_schema(declared.body, components, "validation"), components)
                }
            },
        }
    success = {"schema": {"$ref": REF.format(model=_add(declared.response, components))}} if declared.response else {}
    content = (
        {"content": {m: success if m == "application/json" else {} for m in declared.media_types}}
        if declared.media_types
        else {}
    )
    responses = {
        str(status): {"description": http.HTTPStatus(status).phrase, **content} for status in declared.statuses
    }
    errors = set(declared.errors)
    if declared.body is not None:
        errors |= {400, 413}
    if secured and needs_key(path):
        errors.add(401)
    if declared.scopes:
        operation["x-scopes"] = list(declared.scopes)  # the scopes a key needs: one of them
        if secured:
            errors.add(403)
    if path not in PUBLIC_PATHS:
        errors.add(429)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": http.HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
        }
    operation["responses"] = responses
    if secured and not needs_key(path):
        operation["security"] = []
    return operation


def _schema(model: type[BaseModel], components: dict, mode: str = "serialization") -> dict:
    """`model`'s JSON schema, the models it refers to added to `components`."""
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    return schema


def _add(model: type[BaseModel], components: dict) -> str:
    schema = _schema(model, components)
    if components.setdefault(model.__name__, schema) != schema:  # one would silently stand for the other
        raise ValueError(f"two different response models are named {model.__name__}: rename one")
    return model.__name__


def _nullable_optionals(schema: dict, components: dict) -> dict:
    """Say that optional fields may be `null` (ApiModel takes it as absent), here and in the models referred to."""
    for name, nested in components.items():
        if "properties" in nested and "additionalProperties" in nested:  # a request model (extra="forbid")
            components[name] = _with_nulls(nested)
    return _with_nulls(schema)


def _with_nulls(schema: dict) -> dict:
    required = set(schema.get("required", ()))
    properties = {}
    for name, prop in schema.get("properties", {}).items():
        if name in required or {"type": "null"} in prop.get("anyOf", ()):
            properties[name] = prop
        else:
            outer = {k: v for k, v in prop.items() if k in ANNOTATIONS}
            inner = {k: v for k, v in prop.items() if k not in ANNOTATIONS}
            choices = inner["anyOf"] if set(inner) == {"anyOf"} else [inner]
            properties[name] = {**outer, "anyOf": [*choices, {"type": "null"}]}
    return {**schema, "properties": properties}
