"""API keys: when any is configured, every route but the health probes and the web lab's static page needs
`Authorization: Bearer KEY`.

Keys are compared in constant time and never logged; a request is known by its key's fingerprint (the first
12 hex digits of its SHA-256), or by its client address when the server has no keys.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Iterable, Optional

from starlette.types import ASGIApp, Receive, Scope, Send

from mulm_jax.api.errors import error_response

PUBLIC_PATHS = ("/healthz", "/readyz")  # no key and no rate limit: the probes


def needs_key(path: str) -> bool:
    """All but the probes and the web lab's page and files (`/`, `/lab/...`): those hold no data, and the page
    asks for a key when an API route it calls answers 401."""
    return not (path in PUBLIC_PATHS or path == "/" or path.startswith("/lab/"))


def read_keys_file(path: str | Path) -> tuple[str, ...]:
    """One key per line; blank lines and lines starting with # are skipped."""
    lines = Path(path).read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _matching_key(self, presented: bytes) -> Optional[bytes]:
        found = None
        for key in self.keys:  # every key is compared, so the time does not tell which one (or none) matched
            if hmac.compare_digest(presented, key):
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
        state["client_id"] = "key:" + fingerprint(key.decode())
        await self.app(scope, receive, send)
