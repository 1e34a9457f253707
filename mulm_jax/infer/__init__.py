"""Inference: load a trained run, and generate from it with a KV cache, sampling and continuous batching."""

from mulm_jax.infer.engine import Completion, Engine, QueueFullError, Request, TokenEvent, TokenLogprob
from mulm_jax.infer.loading import InferenceError, LoadedModel, load_model
from mulm_jax.infer.sampling import SamplingError, SamplingParams

__all__ = [
    "Completion",
    "Engine",
    "InferenceError",
    "LoadedModel",
    "QueueFullError",
    "Request",
    "SamplingError",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprob",
    "load_model",
]
