"""One prompt through two to four runs side by side (`python -m mulm_jax inspect compare RUN RUN --prompt ...`):
the settings that differ, each run's loss on the prompt and next-token predictions, one head's attention and every
head's role (drawn by draw.run_comparison). The lab's Compare view shows the same from POST /v1/runs/compare and
POST /v1/inspect."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from mulm_jax.errors import MulmError
from mulm_jax.infer.loading import LoadedModel
from mulm_jax.inspect.draw import shown
from mulm_jax.inspect.heads import head_roles
from mulm_jax.inspect.runs import config_diff
from mulm_jax.inspect.trace import Tracer

MAX_COMPARED = 4


def compare_runs(
    runs: Sequence[tuple[str, LoadedModel]], prompt: str, layer: Optional[int], head: int, top_k: int = 5
) -> dict:
    """{"config_diff": [...], "runs": [per run: its name, step, tokens (pieces), the mean loss on the prompt's
    tokens after the first (nats), the top-k next tokens with probabilities, the attention of `layer` (default:
    each run's last) and `head` ([T][T], None where the run has no such layer or head), and its head roles]}."""
    if not 2 <= len(runs) <= MAX_COMPARED:
        raise MulmError(f"inspect compare takes 2 to {MAX_COMPARED} runs, not {len(runs)}")
    compared = []
    for name, loaded in runs:
        tracer = Tracer(loaded)
        trace = tracer.trace(prompt, top_k=top_k, lens=False)
        L, H = trace.num_layers, trace.num_heads
        at = L - 1 if layer is None else layer
        roles = head_roles(tracer, trace.attention_LxHxTxT)
        compared.append(
            {
                "run": name,
                "step": loaded.step,
                "tokens": trace.pieces,
                "loss": float(-np.mean(trace.logprob_T[1:])) if len(trace.pieces) > 1 else None,
                "next": [
                    {"id": int(i), "text": loaded.tokenizer.piece(int(i)), "prob": math.exp(float(lp))}
                    for i, lp in zip(trace.next_top_ids_N, trace.next_top_logprobs_N)
                ],
                "layer": at,
                "head": head,
                "attention": trace.attention_LxHxTxT[at, head].tolist() if 0 <= at < L and 0 <= head < H else None,
                "shape": {"layers": L, "heads": H},
                "heads": roles.rows(),
            }
        )
    return {"config_diff": config_diff([loaded.config for _, loaded in runs]), "runs": compared}


def summary(result: dict) -> str:
    """The comparison as text: the settings that differ, then a line per run."""
    lines = ["settings that differ:" if result["config_diff"] else "the runs' configs are the same"]
    for diff in result["config_diff"]:
        lines.append(f"  {diff['key']}: " + " | ".join(str(v) for v in diff["values"]))
    for run in result["runs"]:
        best = max(run["heads"], key=lambda h: h["induction"])
        loss = "-" if run["loss"] is None else f"{run['loss']:.3f}"
        nxt = ", ".join(f"'{shown(t['text'])}' {t['prob']:.2f}" for t in run["next"][:3])
        lines.append(
            f"{run['run']} (step {run['step']}): loss on the prompt {loss} nats; next: {nxt}; "
            f"best induction head {best['layer']}.{best['head']} ({best['induction']:.2f})"
        )
    return "\n".join(lines)
