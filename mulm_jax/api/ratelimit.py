"""Rate limits per caller (API key, or client address without keys): requests per minute and generated
tokens per minute, each a token bucket that refills continuously; over the limit answers 429 with Retry-After.
The limits are the server's, or a key's own (its keys file line: keys.Quotas)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from starlette.types import ASGIApp, Receive, Scope, Send

from mulm_jax.api.auth import PUBLIC_PATHS
from mulm_jax.api.errors import ApiError, too_many_requests


class TokenBucket:
    """Holds up to `capacity`; refills `capacity` per minute. Charges may take it below zero (tokens already
    generated are counted in full); it admits again once it has refilled above zero."""

    def __init__(self, capacity: float, now: float):
        self.capacity, self.level, self.updated = capacity, capacity, now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0: now)."""
        self._refill(now)
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def charge(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount


class RateLimiter:
    """`requests_per_minute`, `tokens_per_minute`: the limits of a caller that brings none of its own (0: none)."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.requests_per_minute, self.tokens_per_minute, self.clock = requests_per_minute, tokens_per_minute, clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, buckets: dict[str, TokenBucket], client: str, capacity: int) -> TokenBucket:
        if client not in buckets or buckets[client].capacity != capacity:
            buckets[client] = TokenBucket(capacity, self.clock())
        return buckets[client]

    def admit_request(self, client: str, limit: Optional[int] = None) -> None:
        """Take one request from the caller's bucket (of `limit` a minute, or the server's), or raise 429."""
        limit = self.requests_per_minute if limit is None else limit
        if not limit:
            return
        with self._lock:
            bucket = self._bucket(self._requests, client, limit)
            wait = bucket.wait_for(1, self.clock())
            if wait == 0:
                bucket.charge(1, self.clock())
        if wait:
            raise too_many_requests(f"rate limit of {limit} requests per minute reached", wait, "requests_per_minute")

    def admit_generation(self, client: str, limit: Optional[int] = None) -> None:
        """Raise 429 while the caller's generated-token bucket is empty (it refills over the minute)."""
        limit = self.tokens_per_minute if limit is None else limit
        if not limit:
            return
        with self._lock:
            wait = self._bucket(self._tokens, client, limit).wait_for(1, self.clock())
        if wait:
            raise too_many_requests(
                f"rate limit of {limit} generated tokens per minute reached", wait, "tokens_per_minute"
            )

    def charge_tokens(self, client: str, tokens: int, limit: Optional[int] = None) -> None:
        limit = self.tokens_per_minute if limit is None else limit
        if limit and tokens:
            with self._lock:
                self._bucket(self._tokens, client, limit).charge(tokens, self.clock())


class RequestRateMiddleware:
    """Applies the per-minute request limit to every route but the health probes (after AuthMiddleware)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter):
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            who = scope["state"]["caller"]
            try:
                self.limiter.admit_request(who.client, who.quotas.requests_per_minute)
            except ApiError as e:
                await e.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
