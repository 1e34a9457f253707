"""Text embeddings: the final hidden states of a loaded model, mean-pooled over the input's tokens.

Decoder models pool their last layer's (normed) hidden states; encoder-decoder models pool the encoder output.
Inputs are padded to the same power-of-two buckets as prompts, so a few shapes serve every length.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mulm_jax.infer.buckets import CompiledPerBucket
from mulm_jax.infer.loading import InferenceError, LoadedModel


class MeanPooledEmbeddings:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.context = loaded.config.model.max_seq_len
        self.compiled = CompiledPerBucket(self.context)  # called from the server's threads
        self.dim = loaded.config.model.d_model
        model = loaded.model

        def pooled(params, ids_1xL, valid_1xL):
            hidden_1xLxD = model.apply({"params": params}, ids_1xL, valid_1xL, method="features")
            weights_1xL = valid_1xL.astype(jnp.float32)
            total_1xD = jnp.einsum("bl,bld->bd", weights_1xL, hidden_1xLxD.astype(jnp.float32))
            return total_1xD[0] / weights_1xL.sum()

        self._pooled = self.compiled.jit(pooled)

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """[D] float32 embedding of one token sequence (1 to `context` tokens)."""
        if not 1 <= len(ids) <= self.context:
            raise InferenceError(f"the input has {len(ids)} tokens: expected 1 to {self.context} (the model's context)")
        ids_1xL = self.compiled.pad(ids)
        valid_1xL = np.arange(ids_1xL.shape[1])[None, :] < len(ids)
        return np.asarray(self._pooled(self.loaded.params, ids_1xL, valid_1xL))
