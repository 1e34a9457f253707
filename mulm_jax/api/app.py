"""The app factory: `create_app(settings)` builds the Starlette app from route modules.

Each route module exposes `routes(ctx: ApiContext) -> list[BaseRoute]`; the core modules are listed in
CORE_ROUTES, and `settings.extra_routes` names more (dotted module paths) to add a feature without touching
this file.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request

from mulm_jax.api.auth import AuthMiddleware, caller
from mulm_jax.api.errors import EXCEPTION_HANDLERS
from mulm_jax.api.jobs import JobManager
from mulm_jax.api.keys import ApiKey, Caller, check_unique, read_keys_file
from mulm_jax.api.quotas import Streams
from mulm_jax.api.ratelimit import RateLimiter, RequestRateMiddleware
from mulm_jax.api.registry import ModelRegistry
from mulm_jax.api.telemetry import Metrics, TelemetryMiddleware
from mulm_jax.config import ServeConfig
from mulm_jax.infer import Engine

log = logging.getLogger(__name__)

CORE_ROUTES = (
    "mulm_jax.api.routes.health",
    "mulm_jax.api.routes.me",
    "mulm_jax.api.routes.models",
    "mulm_jax.api.routes.completions",
    "mulm_jax.api.routes.tokens",
    "mulm_jax.api.routes.inspect",
    "mulm_jax.api.routes.datasets",
    "mulm_jax.api.routes.training",
    "mulm_jax.api.routes.runs",
    "mulm_jax.api.routes.docs",
    "mulm_jax.api.routes.lab",
)


@dataclass
class ApiContext:
    """What route modules share: settings, the served models, the job records, the limiter, the streams each key
    has running and the metrics."""

    settings: ServeConfig
    models: ModelRegistry
    jobs: JobManager
    limiter: RateLimiter
    metrics: Metrics = field(default_factory=Metrics)
    secured: bool = False  # the server has API keys: every route but the public ones needs one
    streams: Streams = field(default_factory=Streams)

    def caller(self, request: Request) -> Caller:
        """Who the request comes from: its key's owner, scopes and quotas (keys.Caller)."""
        return caller(request)


def api_keys(settings: ServeConfig) -> tuple[ApiKey, ...]:
    """The keys given one by one (flags, MULM_API_KEYS: every scope, the server's quotas), then the keys file's."""
    keys = tuple(ApiKey(secret) for secret in dict.fromkeys(settings.api_keys))  # a key given twice counts once
    if settings.api_keys_file:
        keys += read_keys_file(settings.api_keys_file)
    check_unique(list(keys), "the API keys")
    return keys


def create_app(settings: ServeConfig, make_engine: Callable[..., Engine] = Engine) -> Starlette:
    """The app; models named in `settings.checkpoints` load in the background at start-up (see /readyz), each
    served by `make_engine` (see ModelRegistry)."""
    keys = api_keys(settings)
    ctx = ApiContext(
        settings=settings,
        models=ModelRegistry(settings, make_engine),
        jobs=JobManager(settings),
        limiter=RateLimiter(settings.requests_per_minute, settings.tokens_per_minute),
        secured=bool(keys),
    )
    _register_collected(ctx)
    routes: list[Any] = []
    for name in CORE_ROUTES + tuple(settings.extra_routes):
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"route module {name!r} cannot be imported: {e}") from e
        if not callable(getattr(module, "routes", None)):
            raise ValueError(f"route module {name!r} has no `routes(ctx)` function")
        routes.extend(module.routes(ctx))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=ctx.models.load_startup_models, name="mulm-load-models", daemon=True).start()
        try:
            yield
        finally:
            ctx.jobs.close()
            ctx.models.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(TelemetryMiddleware, metrics=ctx.metrics, routes=lambda: app.routes),
            Middleware(AuthMiddleware, keys=keys, defaults=settings),
            Middleware(RequestRateMiddleware, limiter=ctx.limiter),
        ],
    )
    app.state.ctx = ctx
    return app


def _register_collected(ctx: ApiContext) -> None:
    def per_model(attribute: str):
        return lambda: {(m.id,): getattr(m.engine.stats(), attribute) for m in ctx.models.all()}

    ctx.metrics.add_collected(
        "mulm_generated_tokens_total",
        "Tokens the engine generated (for requests finished, cancelled or left by their client alike).",
        ("model",),
        per_model("generated_tokens"),
        kind="counter",
    )
    ctx.metrics.add_collected("mulm_queue_depth", "Requests waiting for a slot.", ("model",), per_model("waiting"))
    ctx.metrics.add_collected("mulm_active_slots", "Slots generating now.", ("model",), per_model("active"))
    ctx.metrics.add_collected(
        "mulm_training_jobs",
        "Training jobs by state.",
        ("state",),
        lambda: {(state,): n for state, n in ctx.jobs.counts_by_state("training").items()},
    )
