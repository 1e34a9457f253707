"""Decode speed against Hugging Face transformers, measured in the same run, and against the memory-bandwidth limit.

    .venv/bin/pip install -r bench/requirements.txt     # PyTorch + transformers, for the reference
    .venv/bin/python -m bench.bench_decode [--check] [--no-reference]

Both sides generate greedily from a 16-token random prompt, 128 new tokens, with random weights (float32, CPU):
ours is `python -m mulm_jax bench decode` (the engine: prefill, then the shared decode step over all slots),
the reference is bench/reference_hf_generate.py (`model.generate` with its KV cache). Each runs in a process of
its own, one after the other for each case; tokens/s = generated tokens over the wall time of whole requests.

Targets (issue 5): GPT-2 small at batch 1 >= 1.5x HF and >= 70% of the bandwidth limit (the bytes of weights one
token reads, over the measured copy bandwidth); the 6x384 character model at batch 1 >= 10x HF; 8 concurrent
sequences >= 4x the batch-1 throughput. --check exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.memory_bandwidth import copy_bandwidth_gb_s

ROOT = Path(__file__).resolve().parent.parent
GPT2, CHAR = ROOT / "configs" / "gpt2_small.yaml", ROOT / "configs" / "shakespeare_char_6x384.yaml"
CASES = [(GPT2, 1), (GPT2, 8), (CHAR, 1), (CHAR, 8)]


def last_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours(config: Path, batch: int, args: argparse.Namespace) -> dict:
    return last_json([sys.executable, "-m", "mulm_jax", "bench", "decode", "--config", str(config), "--batch",
                      str(batch), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
                      "--repeats", str(args.repeats), "--json"])


def reference(config: Path, batch: int, args: argparse.Namespace) -> dict:
    return last_json([sys.executable, "-m", "bench.reference_hf_generate", "--config", str(config), "--batch",
                      str(batch), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
                      "--repeats", str(args.repeats)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="ours only (no PyTorch needed)")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    bandwidth = copy_bandwidth_gb_s()
    print(f"copy bandwidth {bandwidth:.1f} GB/s (bytes read + written per second, numpy copy of 256 MB)")
    rows, missed = {}, []
    for config, batch in CASES:
        mine = ours(config, batch, args)
        ref = None if args.no_reference else reference(config, batch, args)
        rows[(config.stem, batch)] = (mine, ref)
        ratio = f"{mine['tokens_per_sec'] / ref['tokens_per_sec']:5.2f}x HF ({ref['tokens_per_sec']:7.1f} tok/s)" \
            if ref else ""
        print(f"{config.stem:24s} batch {batch}: {mine['tokens_per_sec']:7.1f} tok/s, {mine['ms_per_step']:6.2f} ms/step, "
              f"first token {mine['time_to_first_token_ms']:6.1f} ms, {mine['compilations']} compilations  {ratio}")

    gpt2_1, hf_gpt2_1 = rows[("gpt2_small", 1)]
    limit = bandwidth * 1e9 / gpt2_1["weight_bytes"]
    fraction = gpt2_1["tokens_per_sec"] / limit
    print(f"gpt2_small batch 1: {gpt2_1['weight_bytes'] / 1e6:.0f} MB of weights per token -> bandwidth limit "
          f"{limit:.1f} tok/s; ours {fraction:.0%} of it (target 70%)")
    if fraction < 0.7:
        missed.append(f"gpt2_small at {fraction:.0%} of the bandwidth limit")
    for (name, batch), target in ((("gpt2_small", 1), 1.5), (("shakespeare_char_6x384", 1), 10.0)):
        mine, ref = rows[(name, batch)]
        if ref and mine["tokens_per_sec"] / ref["tokens_per_sec"] < target:
            missed.append(f"{name} batch {batch} at {mine['tokens_per_sec'] / ref['tokens_per_sec']:.2f}x HF "
                          f"(target {target}x)")
    for name in ("gpt2_small", "shakespeare_char_6x384"):
        scale = rows[(name, 8)][0]["tokens_per_sec"] / rows[(name, 1)][0]["tokens_per_sec"]
        print(f"{name}: 8 sequences give {scale:.2f}x the batch-1 throughput (target 4x)")
        if scale < 4:
            missed.append(f"{name} batch 8 at {scale:.2f}x batch 1")
    print("targets missed: " + "; ".join(missed) if missed else "all targets met")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
