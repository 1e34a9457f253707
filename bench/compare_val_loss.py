"""Validation loss of our runs and of nanoGPT trained here on the same data, on the whole validation split.

    .venv/bin/pip install -r bench/requirements.txt            # PyTorch, for nanoGPT
    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.compare_val_loss --runs runs/shakespeare [--seeds 1337 1]

The issue's loss target (<= 1.88 after 2000 steps) is nanoGPT's README figure, itself one run with a 20-batch
estimate. This puts the figures side by side on this machine: each nanoGPT seed trains the shakespeare_char CPU
recipe (bench/reference_nanogpt.py's model and schedule, AdamW, clip 1.0) for 2000 iterations on random windows
of the same assembled Tiny Shakespeare train split; then every model is scored on the whole validation split
(consecutive 64-token windows, each position predicted from the window before it) and, for nanoGPT, also with its
own estimate (20 random batches of 12). Our runs' 20-batch figure is in their metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mulm_jax.runs import read_metrics

ROOT = Path(__file__).resolve().parent.parent
T, BATCH, STEPS = 64, 12, 2000


def split_tokens(dataset: Path, split: str) -> np.ndarray:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return np.fromfile(dataset / manifest["files"][split], dtype=manifest["dtype"]).astype(np.int64)


def windows(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = (len(tokens) - 1) // T
    return tokens[: n * T].reshape(n, T), tokens[1 : n * T + 1].reshape(n, T)


def ours_full_val(run: str | Path, val: np.ndarray, step: int | None = None) -> float:
    """Our run's mean loss per token over the whole split `val`, at its newest checkpoint (or `step`'s)."""
    import jax
    import jax.numpy as jnp

    from mulm_jax.infer import load_model

    lm = load_model(run, step)
    logits_fn = jax.jit(lambda params, x: lm.model.apply({"params": params}, x))
    x, y = windows(val)
    total = 0.0
    for i in range(0, len(x), 256):
        logp = jax.nn.log_softmax(logits_fn(lm.params, jnp.asarray(x[i : i + 256], jnp.int32)).astype(jnp.float32))
        total -= float(jnp.take_along_axis(logp, jnp.asarray(y[i : i + 256])[..., None], -1).sum())
    return total / x.size


def nanogpt(seed: int, train: np.ndarray, val: np.ndarray) -> dict:
    import torch

    from bench.reference_nanogpt import GPT, GPTConfig, get_lr

    torch.manual_seed(seed)
    model = GPT(GPTConfig())
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99))
    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)

    def batch(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # nanoGPT's get_batch
        ix = torch.randint(len(data) - T, (BATCH,))
        return torch.stack([data[i : i + T] for i in ix]), torch.stack([data[i + 1 : i + 1 + T] for i in ix])

    start = time.perf_counter()
    model.train()
    for it in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        _, loss = model(*batch(train_t))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        estimate = statistics.mean(float(model(*batch(val_t))[1]) for _ in range(20))
    return {
        "seed": seed,
        "estimate_20_batches": estimate,
        "full_val": nanogpt_full_val(model, val),
        "ms_per_iter": seconds / STEPS * 1e3,
    }


def nanogpt_full_val(model, val: np.ndarray) -> float:
    """A bench.reference_nanogpt model's mean loss per token over the whole split `val`."""
    import torch
    from torch.nn import functional as F

    model.eval()
    x, y = windows(val)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 256):
            logits, _ = model(torch.from_numpy(x[i : i + 256]), torch.from_numpy(y[i : i + 256]))
            total += float(
                F.cross_entropy(
                    logits.view(-1, logits.size(-1)), torch.from_numpy(y[i : i + 256]).view(-1), reduction="sum"
                )
            )
    return total / y.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char.yaml"))
    parser.add_argument("--runs", nargs="*", default=[], help="our run folders (train.py --workdir) to score")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1337], help="nanoGPT seeds to train")
    args = parser.parse_args()

    from mulm_jax.config import load_config
    from mulm_jax.data.assemble import prepare_dataset

    dataset = prepare_dataset(load_config(args.config).data)
    train, val = split_tokens(dataset, "train"), split_tokens(dataset, "val")
    print(f"data set {dataset}: train {len(train):,} tokens, val {len(val):,} tokens")
    for run in args.runs:
        rows = read_metrics(Path(run))
        last_eval = [r for r in rows if "val_loss" in r][-1]
        print(
            f"ours {run}: step {last_eval['step']}, 20-batch val loss {last_eval['val_loss']:.4f}, "
            f"whole val split {ours_full_val(run, val):.4f}",
            flush=True,
        )
    for seed in args.seeds:
        r = nanogpt(seed, train, val)
        print(
            f"nanoGPT seed {seed}: 2000 iterations ({r['ms_per_iter']:.0f} ms each), 20-batch estimate "
            f"{r['estimate_20_batches']:.4f}, whole val split {r['full_val']:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
