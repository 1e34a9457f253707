"""The models a server holds: each a loaded run with its engine (started and warmed up), chat template and
embedding function, under a model id; while a run loads and compiles, its id is listed with that state."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import jax
from pydantic import BaseModel

from mulm_jax.api.errors import ApiError
from mulm_jax.config import ServeConfig
from mulm_jax.errors import MulmError
from mulm_jax.infer import Engine, LoadedModel, load_model
from mulm_jax.infer.chat import ChatTemplate
from mulm_jax.infer.embeddings import MeanPooledEmbeddings
from mulm_jax.startup import Phases

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5  # what a request for a model still loading is told to wait
MODEL_ERRORS = (404, 503)  # what ModelRegistry.get answers: an unknown model, one still loading


class ModelCard(BaseModel):
    """A model as GET /v1/models lists it; one still loading or compiling has no step, size or architecture yet."""

    id: str
    object: Literal["model"] = "model"
    created: int  # unix seconds: when the server loaded it, or began to
    owned_by: Literal["mulm_jax"] = "mulm_jax"
    state: Literal["loading", "compiling", "ready"]
    run_dir: str
    step: Optional[int] = None
    context_length: Optional[int] = None
    architecture: Optional[str] = None
    vocab_size: Optional[int] = None  # the model's (its embedding table's rows)
    tokenizer_vocab_size: Optional[int] = None  # the ids its tokenizer decodes: the ones generation can draw
    parameters: Optional[int] = None
    loaded_by: Optional[str] = None  # the key (its name or fingerprint) that loaded it; none: the server's own

    def body(self) -> dict:
        return self.model_dump(exclude_none=True)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@dataclass
class ServedModel:
    id: str
    loaded: LoadedModel
    engine: Engine
    chat: ChatTemplate
    embeddings: MeanPooledEmbeddings
    created: int  # unix seconds, when the server loaded it
    owner: Optional[str] = None  # the key that loaded it (keys.ApiKey.owner); None: named at start-up

    def describe(self) -> ModelCard:
        cfg = self.loaded.config.model
        return ModelCard(
            id=self.id,
            created=self.created,
            state="ready",
            run_dir=str(self.loaded.run_dir),
            step=self.loaded.step,
            context_length=cfg.max_seq_len,
            architecture=cfg.architecture,
            vocab_size=cfg.vocab_size,
            tokenizer_vocab_size=self.loaded.tokenizer.vocab_size,
            parameters=sum(int(leaf.size) for leaf in jax.tree.leaves(self.loaded.params)),
            loaded_by=self.owner,
        )

    def encode(self, value: str | Sequence[int], param: str, *, prompt: bool = False) -> list[int]:
        """Token ids of a text as the tokenizer reads it or, with `prompt`, of a generation prompt as the engine
        reads it (text or ids; an empty one starts from the beginning-of-text token; ids are checked against the
        vocabulary). What the tokenizer or engine refuses (a character it does not know, say) is a 400 naming
        `param`."""
        try:
            return self.engine.tokenize(value) if prompt else self.loaded.tokenizer.encode(value)
        except ValueError as e:  # the tokenizer's DataError, or the engine's InferenceError
            raise ApiError(400, f"{param}: {e}", param=param, code="invalid_value") from None


@dataclass
class LoadingModel:
    """A model id reserved while its run folder is read ("loading") and its engine compiles ("compiling")."""

    id: str
    run_dir: str
    state: str = "loading"
    since: float = field(default_factory=time.time)

    def describe(self) -> ModelCard:
        return ModelCard(id=self.id, created=int(self.since), state=self.state, run_dir=self.run_dir)


def parse_checkpoint(spec: str) -> tuple[str, str]:
    """`ID=RUN_DIR` or `RUN_DIR` (id: the folder's name) -> (id, run_dir)."""
    model_id, sep, path = spec.partition("=")
    if not sep:
        path = spec
        model_id = Path(spec.rstrip("/")).name
    if not model_id or not path:
        raise MulmError(f"checkpoint {spec!r}: expected RUN_DIR or ID=RUN_DIR")
    return model_id, path


class ModelRegistry:
    """Thread-safe map of model id -> ServedModel, and of the ids still loading. `ready` once every model named at
    start-up is loaded. `make_engine(loaded, slots=, max_queue=, int8=, reserved_slots=)` makes what generates for a model: an
    Engine, or in the API's tests a stand-in that compiles nothing."""

    def __init__(self, settings: ServeConfig, make_engine: Callable[..., Engine] = Engine):
        self.settings, self.make_engine = settings, make_engine
        self._models: dict[str, ServedModel] = {}
        self._loading: dict[str, LoadingModel] = {}
        self._lock = threading.Lock()
        self.startup_done = threading.Event()
        self.startup_errors: list[str] = []

    def load_startup_models(self) -> None:
        """Load every `settings.checkpoints` entry (in the calling thread), all listed as loading from the start;
        failures are kept for /readyz."""
        try:
            reserved = []
            for spec in self.settings.checkpoints:
                try:
                    model_id, path = parse_checkpoint(spec)
                    self._reserve(model_id, path)
                    reserved.append((spec, model_id, path))
                except (ValueError, ApiError) as e:
                    self._startup_error(spec, e)
            for spec, model_id, path in reserved:
                try:
                    self._load(model_id, path)
                except ApiError as e:
                    self._startup_error(spec, e)
        finally:
            self.startup_done.set()

    def _startup_error(self, spec: str, e: Exception) -> None:
        message = getattr(e, "message", str(e))
        log.error("could not load %s: %s", spec, message)
        self.startup_errors.append(f"{spec}: {message}")

    @property
    def ready(self) -> bool:
        return self.startup_done.is_set() and not self.startup_errors

    def add(
        self, model_id: str, run_dir: str | Path, step: Optional[int] = None, owner: Optional[str] = None
    ) -> ServedModel:
        """Load a run (its newest checkpoint, or `step`) and serve it as `model_id`, for `owner` (a key)."""
        self._reserve(model_id, run_dir)
        return self._load(model_id, run_dir, step, owner)

    def remove(self, model_id: str) -> ServedModel:
        """Stop serving a model: its engine stops, and what it was generating ends as cancelled (503 to its
        callers). 409 while it is still loading, 404 when no such id is served."""
        with self._lock:
            loading = model_id in self._loading
        if loading:
            raise ApiError(
                409,
                f"model {model_id!r} is still loading: unload it once it is ready",
                param="model",
                code="model_loading",
            )
        served = self.get(model_id)
        with self._lock:
            if self._models.get(model_id) is not served:  # another call removed it meanwhile
                raise ApiError(
                    404, f"model {model_id!r} is not served here", type="not_found_error", code="model_not_found"
                )
            del self._models[model_id]
        served.engine.stop()
        log.info("stopped serving %s", model_id)
        return served

    def _load(
        self, model_id: str, run_dir: str | Path, step: Optional[int] = None, owner: Optional[str] = None
    ) -> ServedModel:
        """Load and serve a run under an id reserved for it; the reservation ends either way."""
        try:
            phases = Phases()
            try:
                loaded = load_model(run_dir, step)
            except (ValueError, FileNotFoundError) as e:  # InferenceError and config errors are ValueErrors
                raise ApiError(400, str(e), param="run_dir", code="invalid_run") from None
            phases.mark("load")
            return self._serve(model_id, loaded, phases, owner)
        finally:
            self._release(model_id)

    def serve(self, model_id: str, loaded: LoadedModel) -> ServedModel:
        """Serve a model already in memory as `model_id`."""
        self._reserve(model_id, loaded.run_dir)
        try:
            return self._serve(model_id, loaded)
        finally:
            self._release(model_id)

    def _reserve(self, model_id: str, run_dir: str | Path | None) -> None:
        """List `model_id` as loading; 409 when it is served or loading already."""
        with self._lock:
            if model_id in self._models or model_id in self._loading:
                raise ApiError(409, f"model id {model_id!r} is already served", param="id", code="model_exists")
            self._loading[model_id] = LoadingModel(model_id, str(run_dir))

    def _release(self, model_id: str) -> None:
        with self._lock:
            self._loading.pop(model_id, None)

    def _serve(
        self, model_id: str, loaded: LoadedModel, phases: Optional[Phases] = None, owner: Optional[str] = None
    ) -> ServedModel:
        """Compile the engine for every prompt bucket, start it, and list the model; log how long each part took
        (`phases`: those before, e.g. loading the checkpoint)."""
        phases = phases or Phases()
        try:
            chat = ChatTemplate.load(loaded.run_dir)
        except ValueError as e:
            raise ApiError(400, str(e), param="run_dir", code="invalid_run") from None
        with self._lock:
            self._loading[model_id].state = "compiling"
        engine = self.make_engine(
            loaded,
            slots=self.settings.slots,
            max_queue=self.settings.max_queue,
            int8=self.settings.int8,
            reserved_slots=self.settings.reserved_slots,
        )
        phases.mark("weights to the device", engine.params)
        engine.warmup()
        phases.mark(f"warm-up ({engine.stats().compilations} compilations)")
        engine.start()
        served = ServedModel(model_id, loaded, engine, chat, MeanPooledEmbeddings(loaded), int(time.time()), owner)
        log.info("serving %s from %s (step %d): %s", model_id, loaded.run_dir, loaded.step, phases.line())
        with self._lock:
            self._models[model_id] = served
        return served

    def get(self, model_id: str) -> ServedModel:
        """The model, ready to serve: 503 with Retry-After while it loads, 404 when no such id is known."""
        with self._lock:
            served, loading = self._models.get(model_id), self._loading.get(model_id)
            known = sorted(self._models)
        if loading is not None:
            raise ApiError(
                503,
                f"model {model_id!r} is still {loading.state} ({time.time() - loading.since:.0f} s "
                f"so far); retry in a few seconds",
                type="server_error",
                param="model",
                code="model_loading",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if served is None:
            raise ApiError(
                404,
                f"model {model_id!r} is not served here; served models: {', '.join(known) or 'none'}",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        return served

    def loading_ids(self) -> set[str]:
        with self._lock:
            return set(self._loading)

    def all(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def describe_all(self) -> list[ModelCard]:
        """Every model served or loading, as /v1/models lists them (with a `state`)."""
        with self._lock:
            listed = list(self._models.values()) + list(self._loading.values())
        return [m.describe() for m in listed]

    def describe(self, model_id: str) -> ModelCard:
        with self._lock:
            loading = self._loading.get(model_id)
        return loading.describe() if loading is not None else self.get(model_id).describe()

    def close(self) -> None:
        for served in self.all():
            served.engine.stop()
