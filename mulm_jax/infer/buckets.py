"""Functions over token ids padded to a few prompt lengths (buckets), jitted once per bucket and counted."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np


def prompt_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded prompt lengths: powers of two from `smallest` up to the context, and the context itself."""
    sizes, n = [], min(smallest, max_len)
    while n < max_len:
        sizes.append(n)
        n *= 2
    return tuple(sizes) + (max_len,)


class CompiledPerBucket:
    """The prompt buckets of sequences of up to `max_len` tokens, and the functions jitted over them.

    `pad` puts ids into a bucket; each function from `jit` compiles once per bucket (and per value of its static
    arguments), and `compilations` counts the compilations of all of them. Its functions trace one at a time,
    under a lock, which keeps the count exact when threads call them; threads that call with the same new bucket
    share one compilation (JAX's cache of traces and compiled programs lets one of them fill an entry while the
    others wait for it), and a call of a compiled bucket takes no lock.
    """

    def __init__(self, max_len: int):
        self.buckets = prompt_buckets(max_len)
        self.compilations = 0
        self._tracing = threading.Lock()

    def pad(self, ids: Sequence[int], bucket: Optional[int] = None) -> np.ndarray:
        """Token ids as int32 [1, L], zero-padded to the smallest bucket that holds them (at least one position),
        or to `bucket`."""
        ids_1xL = np.zeros((1, bucket or next(n for n in self.buckets if n >= max(len(ids), 1))), np.int32)
        ids_1xL[0, : len(ids)] = ids
        return ids_1xL

    def jit(self, fn: Callable[..., Any], **options: Any) -> Any:
        """`fn` jitted with `options` (donate_argnums, static_argnames, compiler_options, ...), counted when traced."""

        @functools.wraps(fn)  # keeps its name and signature (static_argnames are looked up there)
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._tracing:
                self.compilations += 1
                return fn(*args, **kwargs)

        return jax.jit(counted, **options)
