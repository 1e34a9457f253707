"""Prometheus metrics (text format 0.0.4) and structured access logs, with the middleware that records both."""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from typing import Callable, Iterable

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("mulm_jax.api.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + 1.0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            for labels, value in sorted(self._values.items()):
                yield f"{self.name}{_labels(self.label_names, labels)} {value:g}"


class Histogram:
    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ):
        self.name, self.help, self.label_names, self.buckets = name, help, labels, buckets
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [counts per bucket..., +Inf count, sum]
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0] * (len(self.buckets) + 1) + [0.0])
            series[bisect.bisect_left(self.buckets, value)] += 1
            series[-1] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            for labels, series in sorted(self._series.items()):
                running = 0
                for bound, n in zip(self.buckets + (float("inf"),), series[:-1]):
                    running += n
                    le = 'le="+Inf"' if bound == float("inf") else f'le="{bound:g}"'
                    yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}"
                yield f"{self.name}_sum{_labels(self.label_names, labels)} {series[-1]:g}"
                yield f"{self.name}_count{_labels(self.label_names, labels)} {running}"


class Collected:
    """Values read from their owner when metrics are scraped: `collect()` returns {labels tuple: value}."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...], collect: Callable[[], dict], kind: str = "gauge"):
        self.name, self.help, self.label_names, self.collect, self.kind = name, help, labels, collect, kind

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in sorted(self.collect().items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {value:g}"


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "mulm_http_requests_total", "HTTP requests by route, method and status.", ("route", "method", "status")
        )
        self.latency = Histogram(
            "mulm_http_request_duration_seconds",
            "Time from request to the end of the response (streams: to their last byte).",
            ("route",),
        )
        self.time_to_first_token = Histogram(
            "mulm_time_to_first_token_seconds", "Time from submission to the first generated token.", ("model",)
        )
        self.metrics: list = [self.requests, self.latency, self.time_to_first_token]

    def add_collected(
        self, name: str, help: str, labels: tuple[str, ...], collect: Callable[[], dict], kind: str = "gauge"
    ) -> None:
        self.metrics.append(Collected(name, help, labels, collect, kind))

    def render(self) -> str:
        return "\n".join(line for metric in self.metrics for line in metric.render()) + "\n"


class TelemetryMiddleware:
    """Counts every request by route template and status, times it, and writes one JSON access-log line.

    The route label is the path template that matches (`/v1/training/jobs/{id}`), found before any other
    middleware answers (a 401 is counted under its route too), or `unmatched`, so the number of series stays
    bounded. Credentials are never logged: only the caller's key fingerprint.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def route_label(self, scope: Scope) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match != Match.NONE:  # FULL, or PARTIAL: the path matches but not the method
                return route.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            elapsed = time.perf_counter() - start
            route = self.route_label(scope)
            self.metrics.requests.inc(route, scope["method"], str(status[0]))
            self.metrics.latency.observe(elapsed, route)
            client = scope.get("client")
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status[0],
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": client[0] if client else None,
                        "key": scope.get("state", {}).get("client_id"),
                    }
                )
            )
