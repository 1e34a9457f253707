"""The models a server holds: each a loaded run with its engine (started and warmed up), chat template and
embedding function, under a model id."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jax

from mulm_jax.api.errors import ApiError
from mulm_jax.config import ServeConfig
from mulm_jax.infer import Engine, LoadedModel, load_model
from mulm_jax.infer.chat import ChatTemplate
from mulm_jax.infer.embeddings import MeanPooledEmbeddings
from mulm_jax.startup import Phases

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    id: str
    loaded: LoadedModel
    engine: Engine
    chat: ChatTemplate
    embeddings: MeanPooledEmbeddings
    created: int  # unix seconds, when the server loaded it

    def describe(self) -> dict:
        cfg = self.loaded.config.model
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "mulm_jax",
                "run_dir": str(self.loaded.run_dir), "step": self.loaded.step, "context_length": cfg.max_seq_len,
                "architecture": cfg.architecture, "vocab_size": cfg.vocab_size,
                "parameters": sum(int(leaf.size) for leaf in jax.tree.leaves(self.loaded.params))}


def parse_checkpoint(spec: str) -> tuple[str, str]:
    """`ID=RUN_DIR` or `RUN_DIR` (id: the folder's name) -> (id, run_dir)."""
    model_id, sep, path = spec.partition("=")
    if not sep:
        path = spec
        model_id = Path(spec.rstrip("/")).name
    if not model_id or not path:
        raise ValueError(f"checkpoint {spec!r}: expected RUN_DIR or ID=RUN_DIR")
    return model_id, path


class ModelRegistry:
    """Thread-safe map of model id -> ServedModel. `ready` once every model named at start-up is loaded."""

    def __init__(self, settings: ServeConfig):
        self.settings = settings
        self._models: dict[str, ServedModel] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self.startup_done = threading.Event()
        self.startup_errors: list[str] = []

    def load_startup_models(self) -> None:
        """Load every `settings.checkpoints` entry (in the calling thread); failures are kept for /readyz."""
        try:
            for spec in self.settings.checkpoints:
                try:
                    model_id, path = parse_checkpoint(spec)
                    self.add(model_id, path)
                except (ValueError, ApiError) as e:
                    message = getattr(e, "message", str(e))
                    log.error("could not load %s: %s", spec, message)
                    self.startup_errors.append(f"{spec}: {message}")
        finally:
            self.startup_done.set()

    @property
    def ready(self) -> bool:
        return self.startup_done.is_set() and not self.startup_errors

    def add(self, model_id: str, run_dir: str | Path, step: Optional[int] = None) -> ServedModel:
        """Load a run (its newest checkpoint, or `step`) and serve it as `model_id`."""
        self._reserve(model_id)
        try:
            phases = Phases()
            try:
                loaded = load_model(run_dir, step)
            except (ValueError, FileNotFoundError) as e:  # InferenceError and config errors are ValueErrors
                raise ApiError(400, str(e), param="run_dir", code="invalid_run") from None
            phases.mark("load")
            return self._serve(model_id, loaded, phases)
        finally:
            self._release(model_id)

    def serve(self, model_id: str, loaded: LoadedModel) -> ServedModel:
        """Serve a model already in memory as `model_id`."""
        self._reserve(model_id)
        try:
            return self._serve(model_id, loaded)
        finally:
            self._release(model_id)

    def _reserve(self, model_id: str) -> None:
        with self._lock:
            if model_id in self._models or model_id in self._loading:
                raise ApiError(409, f"model id {model_id!r} is already served", param="id", code="model_exists")
            self._loading.add(model_id)

    def _release(self, model_id: str) -> None:
        with self._lock:
            self._loading.discard(model_id)

    def _serve(self, model_id: str, loaded: LoadedModel, phases: Optional[Phases] = None) -> ServedModel:
        """Compile the engine for every prompt bucket, start it, and list the model; log how long each part took
        (`phases`: those before, e.g. loading the checkpoint)."""
        phases = phases or Phases()
        try:
            chat = ChatTemplate.load(loaded.run_dir)
        except ValueError as e:
            raise ApiError(400, str(e), param="run_dir", code="invalid_run") from None
        engine = Engine(loaded, slots=self.settings.slots, max_queue=self.settings.max_queue, int8=self.settings.int8)
        phases.mark("weights to the device", engine.params)
        engine.warmup()
        phases.mark(f"warm-up ({engine.stats().compilations} compilations)")
        engine.start()
        served = ServedModel(model_id, loaded, engine, chat, MeanPooledEmbeddings(loaded), int(time.time()))
        log.info("serving %s from %s (step %d): %s", model_id, loaded.run_dir, loaded.step, phases.line())
        with self._lock:
            self._models[model_id] = served
        return served

    def get(self, model_id: str) -> ServedModel:
        with self._lock:
            served = self._models.get(model_id)
            known = sorted(self._models)
        if served is None:
            raise ApiError(404, f"model {model_id!r} is not served here; served models: "
                                f"{', '.join(known) or 'none'}", type="not_found_error", param="model",
                           code="model_not_found")
        return served

    def all(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def close(self) -> None:
        for served in self.all():
            served.engine.stop()
