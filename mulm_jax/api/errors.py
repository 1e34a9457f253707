"""Errors as OpenAI-style JSON bodies: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

from __future__ import annotations

import math
from typing import Any, Optional

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from mulm_jax.infer import InferenceError, QueueFullError


class ApiError(Exception):
    """A request the API refuses; `status` is the HTTP status, `param` the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def too_many_requests(message: str, wait: float, code: str) -> ApiError:
    """429 with Retry-After: the whole seconds to wait (at least 1), said in the message too; `code` names the
    limit or quota."""
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429,
        f"{message}; retry in {seconds} s",
        type="rate_limit_error",
        code=code,
        headers={"Retry-After": str(seconds)},
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str]  # the request field at fault (`messages[0].content`), or null
    code: Optional[str]


class ErrorBody(BaseModel):
    """Every error answer's body (OpenAI's shape)."""

    error: ErrorDetail


def error_body(
    message: str, *, type: str = "invalid_request_error", param: Optional[str] = None, code: Optional[str] = None
) -> dict:
    return ErrorBody(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: Optional[str] = None,
    code: Optional[str] = None,
    headers: Optional[dict] = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type=type, param=param, code=code), status_code=status, headers=headers)


def from_inference(e: InferenceError, param: Optional[str] = None) -> ApiError:
    """The API error for an engine refusal: a full queue is 429 (retry soon), anything else a bad request."""
    if isinstance(e, QueueFullError):
        return ApiError(
            429,
            f"the server is busy: {e}; retry shortly",
            type="server_busy",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    return ApiError(400, str(e), param=param)


_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = exc.headers
    if exc.status_code == 405:  # every method of the path, not only those of the first route that matched it
        allowed = {
            m
            for route in request.app.routes
            if route.matches(request.scope)[0] != Match.NONE
            for m in getattr(route, "methods", None) or ()
        }
        headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
    return error_response(
        exc.status_code, exc.detail or "error", type=_STATUS_TYPES.get(exc.status_code, "api_error"), headers=headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}
