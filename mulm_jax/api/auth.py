"""API keys: when any is configured, every route but the health probes and the web lab's static page needs
`Authorization: Bearer KEY`, and a route declared with a scope (openapi.endpoint) needs a key that holds it.

Keys are compared in constant time and never logged; a request is known by its key's fingerprint (the first
12 hex digits of its SHA-256), or by its client address when the server has no keys. The middleware puts the
request's Caller (keys.Caller: owner, scopes, quotas) in `scope["state"]["caller"]`.
"""

from __future__ import annotations

import hmac
from typing import Iterable, Optional

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from mulm_jax.api.errors import ApiError, error_response
from mulm_jax.api.keys import SCOPES, ApiKey, Caller, Quotas, fingerprint

PUBLIC_PATHS = ("/healthz", "/readyz")  # no key and no rate limit: the probes


def needs_key(path: str) -> bool:
    """All but the probes and the web lab's page and files (`/`, `/lab/...`): those hold no data, and the page
    asks for a key when an API route it calls answers 401."""
    return not (path in PUBLIC_PATHS or path == "/" or path.startswith("/lab/"))


def caller(request: Request) -> Caller:
    """The request's caller, as AuthMiddleware found it."""
    return request.scope["state"]["caller"]


def require(request: Request, scopes: tuple[str, ...]) -> Caller:
    """The caller, when it holds one of `scopes` (or `admin`); 403 naming them otherwise."""
    who = caller(request)
    if not any(who.has(s) for s in scopes):
        needed = " or ".join(repr(s) for s in scopes)
        held = ", ".join(s for s in SCOPES if s in who.scopes) or "none"
        raise ApiError(
            403,
            f"{request.method} {request.url.path} needs the {needed} scope; this key has {held}",
            type="permission_error",
            code="insufficient_scope",
        )
    return who


class AuthMiddleware:
    """`keys`: the accepted keys; `defaults`: the server's settings, whose quotas a key's unset ones take."""

    def __init__(self, app: ASGIApp, keys: Iterable[ApiKey], defaults: object):
        self.app = app
        self.keys = [(k.secret.encode(), k) for k in keys]
        self.defaults = Quotas().over(defaults)
        self.callers = {k.secret: self._caller(k) for _, k in self.keys}

    def _caller(self, key: ApiKey) -> Caller:
        return Caller(key.owner, f"key:{fingerprint(key.secret)}", key.scopes, key.quotas.over(self.defaults))

    def _matching_key(self, presented: bytes) -> Optional[ApiKey]:
        found = None
        for secret, key in self.keys:  # every key is compared, so the time does not tell which one (or none) matched
            if hmac.compare_digest(presented, secret):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        client = scope.get("client")
        if not self.keys or not needs_key(scope["path"]):
            state["client_id"] = f"ip:{client[0]}" if client else "anonymous"
            # no keys: everyone may do everything; a public path of a keyed server: nothing there asks
            scopes = frozenset(SCOPES) if not self.keys else frozenset()
            state["caller"] = Caller(None, state["client_id"], scopes, self.defaults)
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, presented = header.partition(b" ")
        key = self._matching_key(presented.strip()) if scheme.lower() == b"bearer" else None
        if key is None:
            message = (
                "a valid API key is required: send `Authorization: Bearer KEY`"
                if not header
                else "the API key is not valid"
            )
            response = error_response(
                401,
                message,
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        state["caller"] = self.callers[key.secret]
        state["client_id"] = state["caller"].client
        await self.app(scope, receive, send)
