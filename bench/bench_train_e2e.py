"""End-to-end training speed: `python train.py` on configs/shakespeare_char.yaml against nanoGPT's train.py loop.

    .venv/bin/pip install -r bench/requirements.txt          # PyTorch, for nanoGPT
    MULM_DATA_MIRROR=../shared/data .venv/bin/python -m bench.bench_train_e2e [--rounds 2] [--steps 300] [--check]
        [--baseline OTHER_CHECKOUT/train.py]     # a third side: another version of ours, e.g. before a change

The two take turns, each run a process of its own started from the command line, as a user starts them.
nanoGPT's side is its train.py loop at its README's CPU recipe (batch 12 x 64, eval_iters 20, log_interval 1,
eval_interval 250, no compile) around bench/reference_nanogpt.py's model: a batch drawn from the memory-mapped
train split after each forward, `loss.item()` and a log line every iteration, train and val estimates every 250
iterations with a checkpoint when the val loss improves, on the same Tiny Shakespeare split as ours. Ours is
train.py with train.steps set to the same count (its cosine schedule shortened with it, which changes no speed).

Figures, as issue #16 measures them: nanoGPT's median iteration time after iteration 20, from its log lines;
ours from metrics.jsonl, (time at step N - time at step 20) / (N - 20): every step in between, the evaluation at
step 250 included. Also each side's mean over those iterations (nanoGPT's evaluation included), the median of
our 10-step rows, the start-up (process start to the end of the first step) and the whole wall time. Each figure
is the median over rounds; the ratio is nanoGPT's ms per iteration over ours (target >= 1.25).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mulm_jax.runs import read_metrics

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "shakespeare_char.yaml"
MIN_RATIO = 1.25
SKIP = 20  # iterations left out at the start: compilation, warm-up
B, T = 12, 64
ITER_LINE = re.compile(r"^iter (\d+): loss [-\d.naninf]+, time ([\d.]+)ms")


def nanogpt_worker(dataset: Path, steps: int, out_dir: Path, save_final: bool = False) -> None:
    """nanoGPT's train.py loop (CPU, float32, no DDP, no compile), printing its log lines; `steps` = max_iters.
    save_final: also write the model as it ends to out_dir / final.pt (for bench.speedrun to score)."""
    import numpy as np
    import torch

    from bench.reference_nanogpt import GPT, GPTConfig, get_lr

    manifest = json.loads((dataset / "manifest.json").read_text())
    paths = {split: dataset / manifest["files"][split] for split in ("train", "val")}
    torch.manual_seed(1337)
    model = GPT(GPTConfig())
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99))

    def get_batch(split: str):  # a fresh memmap per batch, as nanoGPT does to avoid a memory leak
        data = np.memmap(paths[split], dtype=manifest["dtype"], mode="r")
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(20)
            for k in range(20):
                _, loss = model(*get_batch(split))
                losses[k] = loss.item()
            out[split] = float(losses.mean())
        model.train()
        return out

    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    X, Y = get_batch("train")
    t0 = time.time()
    best_val_loss = 1e9
    for iter_num in range(steps + 1):  # nanoGPT stops once iter_num > max_iters
        for group in optimizer.param_groups:
            group["lr"] = get_lr(iter_num)
        if iter_num % 250 == 0:
            losses = estimate_loss()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if losses["val"] < best_val_loss:
                best_val_loss = losses["val"]
                if iter_num > 0:
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "iter_num": iter_num,
                            "best_val_loss": best_val_loss,
                        },
                        out_dir / "ckpt.pt",
                    )
        _, loss = model(X, Y)
        X, Y = get_batch("train")  # the next batch, fetched while the forward's graph waits for backward
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        print(f"iter {iter_num}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms", flush=iter_num == 0)
        if iter_num == 0:
            print(f"first iteration done at {t1}", flush=True)
    if save_final:
        torch.save(model.state_dict(), out_dir / "final.pt")


def run_nanogpt(dataset: Path, steps: int, folder: Path, save_final: bool = False) -> dict:
    start = time.time()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_train_e2e",
            "--nanogpt-worker",
            str(dataset),
            "--steps",
            str(steps),
            "--out",
            str(folder),
            *(["--save-final"] if save_final else []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.time() - start
    lines = out.stdout.splitlines()
    dt_ms = {int(m[1]): float(m[2]) for m in map(ITER_LINE.match, lines) if m}
    first = float(next(line for line in lines if line.startswith("first iteration done at")).split()[-1])
    timed = [dt_ms[i] for i in range(SKIP + 1, steps + 1)]
    return {
        "ms": statistics.median(timed),
        "mean_ms": statistics.mean(timed),
        "startup_s": first - start,
        "wall_s": wall,
        "torch": lines[0],
    }


def run_ours(train_py: Path, steps: int, folder: Path, overrides: list[str]) -> dict:
    start = time.time()
    with open(folder / "train.log", "w") as log:
        subprocess.run(
            [
                sys.executable,
                str(train_py),
                "--config",
                str(train_py.parent / "configs" / CONFIG.name),
                "--workdir",
                str(folder / "run"),
                "--set",
                f"train.steps={steps}",
                *overrides,
            ],
            cwd=train_py.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    wall = time.time() - start
    rows = read_metrics(folder / "run")
    at = {r["step"]: r["time"] for r in rows if "loss" in r}
    logged = sorted(s for s in at if s >= SKIP)
    per_row = [(at[b] - at[a]) / (b - a) * 1e3 for a, b in zip(logged, logged[1:])]
    first = next((r["time"] for r in rows if "startup_s" in r), math.nan)  # versions before issue #16: none
    mean_ms = (at[steps] - at[SKIP]) / (steps - SKIP) * 1e3
    return {
        "ms": mean_ms,
        "mean_ms": mean_ms,
        "row_median_ms": statistics.median(per_row),
        "startup_s": first - start,
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300, help="iterations of each run (nanoGPT's max_iters)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra train.py overrides for ours")
    parser.add_argument("--no-reference", action="store_true", help="run ours only (no PyTorch needed)")
    parser.add_argument("--baseline", type=Path, help="another checkout's train.py, run as a third side")
    parser.add_argument("--check", action="store_true", help="exit 1 when the ratio is below --min-ratio")
    parser.add_argument("--min-ratio", type=float, default=MIN_RATIO)
    parser.add_argument("--nanogpt-worker", metavar="DATASET", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--save-final", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= SKIP + 10:
        parser.error(f"--steps must be above {SKIP + 10}")
    if args.nanogpt_worker:
        nanogpt_worker(Path(args.nanogpt_worker), args.steps, Path(args.out), args.save_final)
        return 0

    from mulm_jax.config import load_config
    from mulm_jax.data import prepare_dataset

    dataset = prepare_dataset(load_config(CONFIG).data).resolve()
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict]] = {"nanoGPT": [], "ours": [], "baseline": []}
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="bench_train_e2e_") as tmp:
            if not args.no_reference:
                results["nanoGPT"].append(run_nanogpt(dataset, args.steps, Path(tmp)))
            results["ours"].append(run_ours(ROOT / "train.py", args.steps, Path(tmp), args.overrides))
        if args.baseline:
            with tempfile.TemporaryDirectory(prefix="bench_train_e2e_") as tmp:
                results["baseline"].append(run_ours(args.baseline.resolve(), args.steps, Path(tmp), args.overrides))
        for name, rows in results.items():
            if rows:
                r = rows[-1]
                extra = f", median of 10-step rows {r['row_median_ms']:.1f}" if "row_median_ms" in r else ""
                print(
                    f"round {round_} {name:8s}: {r['ms']:6.1f} ms/iteration (mean {r['mean_ms']:.1f}{extra}), "
                    f"start-up {r['startup_s']:.1f} s, wall {r['wall_s']:.1f} s",
                    flush=True,
                )

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    tokens = B * T
    import jax

    print(
        f"\n{CONFIG.name}, {args.steps} iterations a run, {args.rounds} round(s), medians over rounds; "
        f"{len(os.sched_getaffinity(0))} CPUs, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
        f"after; JAX {jax.__version__}"
    )
    for name in ("ours", "baseline") if args.baseline else ("ours",):
        print(
            f"{name:8s}{median(name, 'ms'):6.1f} ms/step over steps {SKIP}-{args.steps} "
            f"({tokens / median(name, 'ms') * 1e3:,.0f} tokens/s; median of 10-step rows "
            f"{median(name, 'row_median_ms'):.1f} ms); start-up {median(name, 'startup_s'):.1f} s, "
            f"wall {median(name, 'wall_s'):.1f} s"
        )
    if args.no_reference:
        return 0
    ref_ms = median("nanoGPT", "ms")
    print(
        f"nanoGPT {ref_ms:6.1f} ms/iteration, median after iteration {SKIP} ({tokens / ref_ms * 1e3:,.0f} "
        f"tokens/s; mean {median('nanoGPT', 'mean_ms'):.1f} ms); start-up {median('nanoGPT', 'startup_s'):.1f} "
        f"s, wall {median('nanoGPT', 'wall_s'):.1f} s; {results['nanoGPT'][0]['torch']}"
    )
    if args.baseline:
        print(
            f"baseline: {ref_ms / median('baseline', 'ms'):.2f}x nanoGPT's tokens/s; ours is "
            f"{median('baseline', 'ms') / median('ours', 'ms'):.2f}x the baseline's"
        )
    ratio = ref_ms / median("ours", "ms")
    mean_ratio = median("nanoGPT", "mean_ms") / median("ours", "mean_ms")
    verdict = "ok" if ratio >= args.min_ratio else "BELOW TARGET"
    print(
        f"end to end: {ratio:.2f}x nanoGPT's tokens/s (target {args.min_ratio}x): {verdict}; mean against mean "
        f"{mean_ratio:.2f}x; wall time {median('nanoGPT', 'wall_s') / median('ours', 'wall_s'):.2f}x"
    )
    return 1 if args.check and ratio < args.min_ratio else 0


if __name__ == "__main__":
    sys.exit(main())
