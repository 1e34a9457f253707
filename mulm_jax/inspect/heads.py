"""Head roles, the classic measurements over attention weights: entropy, mean distance, previous-token score, and
the induction score on a repeated random sequence (Olsson et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mulm_jax.inspect.trace import Tracer


@dataclass(frozen=True)
class HeadRoles:
    """One value per [layer, head]. Entropy (nats), mean distance (positions back) and previous-token score are
    means over the queries after the first of the traced prompt; induction is measured on its own sequence."""

    entropy_LxH: np.ndarray
    mean_distance_LxH: np.ndarray
    previous_token_LxH: np.ndarray
    induction_LxH: np.ndarray

    def rows(self) -> list[dict]:
        L, H = self.entropy_LxH.shape
        return [
            {
                "layer": layer,
                "head": head,
                "entropy": float(self.entropy_LxH[layer, head]),
                "mean_distance": float(self.mean_distance_LxH[layer, head]),
                "previous_token": float(self.previous_token_LxH[layer, head]),
                "induction": float(self.induction_LxH[layer, head]),
            }
            for layer in range(L)
            for head in range(H)
        ]


def attention_stats(attention_LxHxTxT: np.ndarray) -> dict[str, np.ndarray]:
    """Entropy, mean distance and previous-token score of each head, over queries 1..T-1 (query 0 sees only
    itself); zeros for a one-token prompt."""
    L, H, T, _ = attention_LxHxTxT.shape
    if T < 2:
        zeros = np.zeros((L, H), np.float32)
        return {"entropy": zeros, "mean_distance": zeros, "previous_token": zeros}
    probs = attention_LxHxTxT[:, :, 1:, :].astype(np.float64)
    q, k = np.arange(1, T)[:, None], np.arange(T)[None, :]
    entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0), axis=-1)
    distance = np.sum(probs * (q - k), axis=-1)
    previous = probs[:, :, np.arange(T - 1), np.arange(T - 1)]  # query t (row t - 1) on key t - 1
    return {
        "entropy": entropy.mean(-1).astype(np.float32),
        "mean_distance": distance.mean(-1).astype(np.float32),
        "previous_token": previous.mean(-1).astype(np.float32),
    }


def induction_sequence(vocab: int, half: int, seed: int = 0) -> np.ndarray:
    """A random sequence of `half` distinct-as-possible tokens, then the same again: [2 * half] int32."""
    rng = np.random.default_rng(seed)
    first = rng.choice(vocab, size=half, replace=half > vocab)
    return np.concatenate([first, first]).astype(np.int32)


def induction_scores(attention_LxHxTxT: np.ndarray, half: int) -> np.ndarray:
    """Mean attention from each token of the second copy to the token after its match in the first copy
    (query half + i on key i + 1, i.e. half - 1 positions back), per [layer, head]."""
    i = np.arange(half - 1)
    return attention_LxHxTxT[:, :, half + i, i + 1].mean(-1).astype(np.float32)


def induction_half(context: int) -> int:
    """The length of the repeated sequence: up to 64 tokens, two copies within the context."""
    return max(2, min(64, context // 2))


def head_roles(tracer: Tracer, attention_LxHxTxT: np.ndarray, seeds: int = 4) -> HeadRoles:
    """The roles of every head: statistics of the given prompt's attention, and induction scores averaged over
    `seeds` repeated random sequences of the tokenizer's ordinary ids (for an encoder-decoder, of its decoder's
    self-attention)."""
    stats = attention_stats(attention_LxHxTxT)
    half = induction_half(tracer.context)
    vocab = tracer.tokenizer.vocab_size
    sequences = [induction_sequence(vocab, half, seed).tolist() for seed in range(seeds)]
    # An encoder-decoder's decoder reads the repeated sequence as its target (the source: the same sequence).
    scores = [
        induction_scores(
            tracer.trace(ids, top_k=1, lens=False, target=ids if tracer.encoder_decoder else None).attention_LxHxTxT,
            half,
        )
        for ids in sequences
    ]
    return HeadRoles(
        stats["entropy"], stats["mean_distance"], stats["previous_token"], np.mean(scores, axis=0).astype(np.float32)
    )
