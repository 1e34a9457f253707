"""The training-memory plan (`info --train`, mulm_jax.train.memory) against XLA's buffer assignment of the compiled
train step on this CPU, over steps varied in every dimension the plan models; and the least-squares coefficients
those steps give, to compare with the ones the plan holds.

    .venv/bin/python -m bench.memory_plan [--only N]

Target (issue 31): the plan within 15% of memory_analysis() for the demo, llama_tiny and mulm_1gb.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from mulm_jax.config import load_config
from mulm_jax.train import memory

DEMO, TINY, GPT2 = "configs/shakespeare_char.yaml", "configs/llama_tiny.yaml", "configs/gpt2_small.yaml"
SIX, BIG = "configs/shakespeare_char_6x384.yaml", "configs/mulm_1gb.yaml"
# (config, batch, seq_len, overrides)
STEPS = [
    (DEMO, 12, 64, []),
    (TINY, 16, 256, []),
    (BIG, 1, 256, []),
    (DEMO, 12, 64, ["model.num_layers=1"]),
    (DEMO, 12, 64, ["model.num_layers=2"]),
    (DEMO, 12, 64, ["model.num_layers=8"]),
    (DEMO, 24, 64, []),
    (DEMO, 12, 64, ["model.vocab_size=8000"]),
    (DEMO, 12, 64, ["model.num_layers=2", "model.d_ff=1024"]),
    (DEMO, 12, 64, ["model.num_layers=2", "model.d_model=256"]),
    (DEMO, 6, 128, ["model.num_layers=2", "model.max_seq_len=128"]),
    (DEMO, 12, 64, ["model.num_layers=2", "model.num_heads=8"]),
    (DEMO, 12, 64, ["model.scan_layers=true", "train.remat=true"]),
    (DEMO, 12, 64, ["model.scan_layers=true"]),
    (DEMO, 4, 64, ["model.positional=alibi", "model.num_kv_heads=1"]),
    (DEMO, 12, 64, ["model.dropout=0.1"]),
    (DEMO, 6, 128, ["model.max_seq_len=128", "model.dropout=0.1"]),
    (DEMO, 12, 64, ["model.dropout=0.1", "model.num_layers=2"]),
    (TINY, 4, 256, []),
    (TINY, 4, 256, ["model.dropout=0.1"]),
    (TINY, 2, 512, ["model.attention_impl=blockwise"]),
    (GPT2, 1, 256, []),
    (SIX, 8, 256, []),
    (BIG, 1, 256, ["train.remat=false"]),
    (BIG, 2, 512, []),
    (BIG, 1, 2048, []),
]
COEFFICIENTS = [
    "WIDTH_VECTORS",
    "FF_VECTORS",
    "SCORE_ROWS",
    "DROPOUT_WIDTH_VECTORS",
    "DROPOUT_SCORE_ROWS",
    "LOGIT_ROWS",
]


def plan_with(config, batch, seq_len, values: dict[str, float]) -> int:
    """The plan's total with the coefficients set to `values` (the others as the module holds them)."""
    held = {name: getattr(memory, name) for name in values}
    try:
        for name, value in values.items():
            setattr(memory, name, value)
        return memory.training_memory(config, batch, seq_len).total
    finally:
        for name, value in held.items():
            setattr(memory, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, default=len(STEPS), help="the first N steps (the first 3: the targets)")
    args = parser.parse_args()
    rows, features, targets = [], [], []
    print(f"{'step':<78} {'XLA MiB':>9} {'plan MiB':>9} {'ratio':>6}", flush=True)
    for path, batch, seq_len, overrides in STEPS[: args.only]:
        config = load_config(path, overrides + [f"train.batch_size={batch}", f"train.seq_len={seq_len}"])
        measured = memory.compiled_memory(config, batch, seq_len)
        planned = memory.training_memory(config, batch, seq_len)
        name = f"{path.split('/')[-1]} {batch}x{seq_len} {' '.join(overrides)}"
        print(f"{name:<78} {measured / 2**20:9.1f} {planned.total / 2**20:9.1f} {planned.total / measured:6.2f}")
        rows.append({"step": name, "xla_bytes": measured, **planned.as_dict()})
        zero = {c: 0.0 for c in COEFFICIENTS}
        base = plan_with(config, batch, seq_len, zero)
        features.append([plan_with(config, batch, seq_len, {**zero, c: 1.0}) - base for c in COEFFICIENTS])
        targets.append((measured - base, measured))
    ratios = [r["total"] / r["xla_bytes"] for r in rows]
    print(f"plan / XLA: {min(ratios):.2f} to {max(ratios):.2f} over {len(rows)} steps")
    if len(rows) >= len(COEFFICIENTS):
        weights = np.array([1 / m for _, m in targets])
        A, y = np.array(features, float) * weights[:, None], np.array([t for t, _ in targets]) * weights
        fitted = np.linalg.lstsq(A, y, rcond=None)[0]
        held = {c: getattr(memory, c) for c in COEFFICIENTS}
        print(
            "least-squares coefficients (relative error):",
            json.dumps(dict(zip(COEFFICIENTS, fitted.round(2).tolist()))),
        )
        print("the plan's:", json.dumps(held))


if __name__ == "__main__":
    main()
