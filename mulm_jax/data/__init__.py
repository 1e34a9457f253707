"""Data sets: sources, cleaning, dedup, tokenizers, versioned assembly, and the grain loader."""

from mulm_jax.data.assemble import Assembled, assemble, list_versions, prepare_dataset, read_manifest
from mulm_jax.data.errors import DataError
from mulm_jax.data.loader import eval_batches, load_tokens, make_loader
from mulm_jax.data.tokenizer import Tokenizer

__all__ = [
    "Assembled",
    "DataError",
    "Tokenizer",
    "assemble",
    "eval_batches",
    "list_versions",
    "load_tokens",
    "make_loader",
    "prepare_dataset",
    "read_manifest",
]
