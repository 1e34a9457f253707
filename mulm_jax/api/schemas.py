"""Request bodies: JSON read under a size limit, and typed field access whose errors name the field."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Optional

from starlette.requests import Request

from mulm_jax.api.errors import ApiError

REQUIRED = object()


async def read_json(request: Request, max_bytes: int) -> "Body":
    """The request's JSON object; 413 past `max_bytes` (read no further), 400 when it is not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body has {declared} bytes: the limit is {max_bytes}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the request body is over the limit of {max_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    return Body(data)


class Body:
    """Typed getters over a JSON object: each raises a 400 that names the field, the value and what it expects."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def only(self, allowed: Iterable[str]) -> "Body":
        """Refuse fields this route does not know, rather than ignore what the caller meant to ask."""
        allowed = set(allowed)
        unknown = sorted(k for k in self.data if k not in allowed)
        if unknown:
            raise ApiError(400, f"unrecognized request field {unknown[0]!r}; this route accepts "
                                f"{', '.join(sorted(allowed))}", param=unknown[0], code="unknown_field")
        return self

    def _get(self, name: str, default: Any) -> Any:
        value = self.data.get(name)
        if value is None:
            if default is REQUIRED:
                raise ApiError(400, f"{name!r} is required", param=name, code="missing_field")
            return default
        return value

    def _bad(self, name: str, value: Any, expected: str) -> ApiError:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ApiError(400, f"{name}={shown} is not valid: expected {expected}", param=name, code="invalid_value")

    def string(self, name: str, default: Any = REQUIRED, *, choices: Optional[Iterable[str]] = None) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if not isinstance(value, str):
            raise self._bad(name, value, "a string")
        if choices is not None and value not in choices:
            raise self._bad(name, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    def integer(self, name: str, default: Any = REQUIRED, *, lo: Optional[int] = None,
                hi: Optional[int] = None) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, value, "an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._bad(name, value, _range("an integer", lo, hi))
        return value

    def number(self, name: str, default: Any = REQUIRED, *, lo: Optional[float] = None,
               hi: Optional[float] = None) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._bad(name, value, "a number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._bad(name, value, _range("a number", lo, hi))
        return float(value)

    def boolean(self, name: str, default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, bool):
            raise self._bad(name, value, "true or false")
        return value

    def strings(self, name: str, default: Any = REQUIRED, *, max_items: Optional[int] = None) -> Any:
        """A string or an array of strings, as a tuple."""
        value = self._get(name, default)
        if value is default:
            return value
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise self._bad(name, value, "a string or an array of strings")
        if max_items is not None and len(items) > max_items:
            raise self._bad(name, value, f"at most {max_items} strings")
        return tuple(items)

    def object(self, name: str, default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, dict):
            raise self._bad(name, value, "a JSON object")
        return value

    def array(self, name: str, default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, list):
            raise self._bad(name, value, "an array")
        return value

    def raw(self, name: str, default: Any = REQUIRED) -> Any:
        return self._get(name, default)


def _range(kind: str, lo: Optional[float], hi: Optional[float]) -> str:
    if lo is not None and hi is not None:
        return f"{kind} between {lo} and {hi}"
    return f"{kind} >= {lo}" if lo is not None else f"{kind} <= {hi}"
