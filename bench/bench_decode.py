"""Decode speed against Hugging Face transformers and against the memory-bandwidth limit, measured in the same run.

    .venv/bin/pip install -r bench/requirements.txt     # PyTorch + transformers, for the reference
    .venv/bin/python -m bench.bench_decode [--check] [--no-reference]

Both sides generate greedily from a 16-token random prompt, 128 new tokens (the 4 x 128 character model: what its
64 positions leave), with random weights (float32, CPU): ours is `python -m mulm_jax bench decode` (the engine:
prefill, then the shared decode step over all slots), the reference is bench/reference_hf_generate.py
(`model.generate` with its KV cache). Each runs in a process of its own, one after the other for each case;
tokens/s = generated tokens over the wall time of whole requests. The limit: each `bench decode` measures, in its
own process after its rounds, the read bandwidth of a jitted GEMV over a 512 MB float32 matrix; a step reads every
weight once, so batch B can go no faster than B x bandwidth / weight bytes tokens/s.

Targets (issue 17): every model at batch 1 >= 70% of its bandwidth limit; GPT-2 small at batch 1 >= 1.5x HF;
8 concurrent sequences >= 4x the batch-1 throughput. --check exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPT2, CHAR = ROOT / "configs" / "gpt2_small.yaml", ROOT / "configs" / "shakespeare_char_6x384.yaml"
SMALL_CHAR = ROOT / "configs" / "shakespeare_char.yaml"  # 4 x 128, 64 positions
CASES = [(GPT2, 1), (GPT2, 8), (CHAR, 1), (CHAR, 8), (SMALL_CHAR, 1), (SMALL_CHAR, 8)]


def last_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def new_tokens(config: Path, args: argparse.Namespace) -> int:
    return min(args.new_tokens, 64 - args.prompt_len) if config == SMALL_CHAR else args.new_tokens


def ours(config: Path, batch: int, args: argparse.Namespace) -> dict:
    return last_json(
        [
            sys.executable,
            "-m",
            "mulm_jax",
            "bench",
            "decode",
            "--config",
            str(config),
            "--batch",
            str(batch),
            "--prompt-len",
            str(args.prompt_len),
            "--new-tokens",
            str(new_tokens(config, args)),
            "--repeats",
            str(args.repeats),
            "--json",
        ]
    )


def reference(config: Path, batch: int, args: argparse.Namespace) -> dict:
    return last_json(
        [
            sys.executable,
            "-m",
            "bench.reference_hf_generate",
            "--config",
            str(config),
            "--batch",
            str(batch),
            "--prompt-len",
            str(args.prompt_len),
            "--new-tokens",
            str(new_tokens(config, args)),
            "--repeats",
            str(args.repeats),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="ours only (no PyTorch needed)")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    rows, missed = {}, []
    for config, batch in CASES:
        mine = ours(config, batch, args)
        ref = None if args.no_reference else reference(config, batch, args)
        rows[(config.stem, batch)] = (mine, ref)
        ratio = (
            f"{mine['tokens_per_sec'] / ref['tokens_per_sec']:5.2f}x HF ({ref['tokens_per_sec']:7.1f} tok/s)"
            if ref
            else ""
        )
        print(
            f"{config.stem:24s} batch {batch}: {mine['tokens_per_sec']:7.1f} tok/s, "
            f"{mine['ms_per_step']:6.2f} ms/step, first token {mine['time_to_first_token_ms']:6.1f} ms, "
            f"{mine['fraction_of_limit']:4.0%} of the limit {mine['limit_tokens_per_sec']:7.0f} tok/s "
            f"({mine['weight_bytes'] / 1e6:.1f} MB at {mine['bandwidth_gb_s']:.1f} GB/s)  {ratio}"
        )
    for config, _ in CASES[::2]:
        name = config.stem
        one, ref = rows[(name, 1)]
        if one["fraction_of_limit"] < 0.7:
            missed.append(f"{name} batch 1 at {one['fraction_of_limit']:.0%} of its bandwidth limit (target 70%)")
        if name == "gpt2_small" and ref and one["tokens_per_sec"] / ref["tokens_per_sec"] < 1.5:
            missed.append(f"{name} batch 1 at {one['tokens_per_sec'] / ref['tokens_per_sec']:.2f}x HF (target 1.5x)")
        scale = rows[(name, 8)][0]["tokens_per_sec"] / one["tokens_per_sec"]
        print(f"{name}: 8 sequences give {scale:.2f}x the batch-1 throughput (target 4x)")
        if scale < 4:
            missed.append(f"{name} batch 8 at {scale:.2f}x batch 1")
    print("targets missed: " + "; ".join(missed) if missed else "all targets met")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
