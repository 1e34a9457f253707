"""Weight-only int8 against float32 on a trained run: weight memory, and validation perplexity over the run's data.

    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.bench_int8 --checkpoint runs/shakespeare [--check]

The validation set is `--batches` fixed batches of the run's own validation split (the same windows for both),
scored with the training loss (mulm_jax.train.step.batch_sums). With --check, exits 1 when int8 perplexity is
more than 1% above float32's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax

from mulm_jax.data.loader import eval_batches
from mulm_jax.data.assemble import prepare_dataset
from mulm_jax.infer.loading import load_model
from mulm_jax.infer.quantize import dequantize, quantize_params, weight_bytes
from mulm_jax.train.step import batch_sums

MAX_INCREASE = 0.01


def perplexity(model, params, batches, pad_id) -> float:
    sums = jax.jit(lambda p, b: batch_sums(model, p, b, pad_id))
    loss = count = 0.0
    for batch in batches:
        s = jax.device_get(sums(params, batch))
        loss, count = loss + float(s["loss_sum"]), count + float(s["count"])
    return math.exp(loss / count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    cfg = loaded.config
    batches = eval_batches(
        prepare_dataset(cfg.data), args.batch_size, cfg.train.seq_len or cfg.model.max_seq_len, args.batches
    )
    int8 = quantize_params(loaded.params)
    pad = loaded.tokenizer.pad_id
    ppl_f32 = perplexity(loaded.model, loaded.params, batches, pad)
    ppl_int8 = perplexity(loaded.model, jax.jit(dequantize)(int8), batches, pad)
    increase = ppl_int8 / ppl_f32 - 1
    result = {
        "run": str(args.checkpoint),
        "step": loaded.step,
        "weight_bytes_float32": weight_bytes(loaded.params),
        "weight_bytes_int8": weight_bytes(int8),
        "val_ppl_float32": round(ppl_f32, 4),
        "val_ppl_int8": round(ppl_int8, 4),
        "ppl_increase": round(increase, 5),
        "tokens": args.batches * args.batch_size * (cfg.train.seq_len or cfg.model.max_seq_len),
    }
    print(
        f"weights: {result['weight_bytes_float32'] / 1e6:.2f} MB float32 -> {result['weight_bytes_int8'] / 1e6:.2f} MB "
        f"int8 ({result['weight_bytes_int8'] / result['weight_bytes_float32']:.2f}x)"
    )
    print(
        f"validation perplexity: {ppl_f32:.4f} float32, {ppl_int8:.4f} int8 ({increase:+.3%}; limit +{MAX_INCREASE:.0%})"
    )
    print(json.dumps(result))
    return 1 if args.check and increase > MAX_INCREASE else 0


if __name__ == "__main__":
    sys.exit(main())
