"""Generation on pairs scored: greedy outputs for a data set's held-out sources (or prompts) against their targets,
as exact match, chrF and BLEU (sacrebleu's, with its signatures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from mulm_jax.data.loader import load_pairs
from mulm_jax.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class HeldOut:
    prompt_ids: list[int]  # the source (or prompt): the example's untrained start
    target: str  # the trained rest, without its end token, as text


def held_out_pairs(
    folder: str | Path, tokenizer: Tokenizer, split: str = "val", limit: Optional[int] = None
) -> list[HeldOut]:
    """The split's examples (the first `limit`) as prompts and target texts. Each must be one prompt then one
    target (chat conversations of one assistant turn qualify)."""
    arrays = load_pairs(folder, split)
    out = []
    for i in range(min(arrays.count, limit or arrays.count)):
        ids, mask = arrays.example(i)
        start = int(np.argmax(mask))
        target = ids[start:]
        out.append(HeldOut(ids[:start].tolist(), tokenizer.decode(target[target != tokenizer.eos_id])))
    return out


def score(hypotheses: list[str], references: list[str], bleu_tokenize: str = "13a") -> dict[str, Any]:
    """Exact match (the share of outputs equal to their reference, in %), chrF and corpus BLEU, with sacrebleu's
    signatures for the last two."""
    bleu, chrf = BLEU(tokenize=bleu_tokenize), CHRF()
    refs = [references]
    return {
        "examples": len(references),
        "exact_match": 100.0 * float(np.mean([h == r for h, r in zip(hypotheses, references)])) if references else 0.0,
        "chrf": chrf.corpus_score(hypotheses, refs).score,
        "bleu": bleu.corpus_score(hypotheses, refs).score,
        "chrf_signature": str(chrf.get_signature()),
        "bleu_signature": str(bleu.get_signature()),
    }


def greedy_outputs(loaded: Any, prompts: list[list[int]], max_tokens: int, slots: int = 32) -> list[str]:
    """Each prompt's greedy completion (up to the end token, or `max_tokens`), decoded by the engine with `slots`
    sequences at a time: an encoder-decoder trained on pairs reads each prompt as its source."""
    from mulm_jax.infer import Engine, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    with Engine(loaded, slots=slots, max_queue=len(prompts)) as engine:
        requests = [engine.submit(p, params) for p in prompts]
        return [r.result().text for r in requests]
