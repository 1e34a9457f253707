"""Shared test helpers: tiny model configs."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulm_jax.config import Config, ModelConfig, config_from_dict
from mulm_jax.data.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer
from mulm_jax.infer import LoadedModel
from mulm_jax.models import build_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tiny_model(**overrides) -> ModelConfig:
    """A model small enough to compile in a fraction of a second."""
    base = dict(vocab_size=32, d_model=16, num_layers=1, num_heads=4, d_ff=32, max_seq_len=16)
    base.update(overrides)
    return config_from_dict({"model": base}).model


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def mirror() -> Path:
    """The folder of mirrored corpora (MULM_DATA_MIRROR); tests that need it skip without it."""
    path = os.environ.get("MULM_DATA_MIRROR")
    if not path or not Path(path).is_dir():
        pytest.skip("MULM_DATA_MIRROR is not set to the corpus mirror (../shared/data)")
    return Path(path)


def random_ids(B: int, T: int, seed: int = 0, vocab: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, T), dtype=np.int32)


def random_params(model, *inputs, seed: int = 0, **kwargs):
    """Parameters of the right shapes drawn with numpy: no compilation of the model's initializers.

    Kernels and embeddings ~ N(0, 0.2^2) so that every input visibly changes the output; norm scales 1.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda key: model.init(key, *inputs, **kwargs), jax.random.key(0))

    def draw(path, leaf):
        if path[-1].key == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


ALPHABET = "".join(sorted("abcdefghijklmnopqrstuvwxyz .,!:\n"))  # 32 characters: ids 0..31, no end token


def loaded(seed: int = 0, tokenizer: Tokenizer | None = None, **overrides) -> LoadedModel:
    """A tiny model with random weights and a tokenizer (default: 32 characters), as inference would load a run."""
    cfg = tiny_model(**overrides)
    model = build_model(cfg)
    dummy = jnp.zeros((1, 4), jnp.int32)
    params = random_params(model, *((dummy, dummy) if cfg.architecture == "encoder_decoder" else (dummy,)),
                           seed=seed)["params"]
    return LoadedModel(model=model, params=params, tokenizer=tokenizer or CharTokenizer(list(ALPHABET)),
                       config=Config(model=cfg), step=0, run_dir=None)


def favour(lm: LoadedModel, up: int, down: int, strength: float = 1000.0) -> LoadedModel:
    """`lm` with the embedding rows of tokens `up` and `down` set to +-strength times one direction: with tied
    embeddings, whatever the context, one of the two then has by far the largest logit."""
    table = np.array(lm.params["embedder"]["token"]["embedding"])
    direction = np.random.default_rng(0).normal(size=table.shape[1])
    table[up], table[down] = strength * direction, -strength * direction
    params = {**lm.params, "embedder": {**lm.params["embedder"], "token": {"embedding": jnp.asarray(table)}}}
    return dataclasses.replace(lm, params=params)


SP_CORPUS = ("The history of the city is the history of its people. The title of the book was known to all, and the "
             "people of the town read it in the evening. In the morning they went to the market, where the traders "
             "sold bread, fish and wine. ")


def sentencepiece_tokenizer(model_type: str = "bpe") -> SentencePieceTokenizer:
    """310 pieces trained as the project trains them (byte fallback: other characters become byte pieces)."""
    docs = [SP_CORPUS.replace("the", word) for word in ("the", "a", "this", "that", "each", "one", "every")]
    return SentencePieceTokenizer.train(docs, model_type, 310)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value
