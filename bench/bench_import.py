"""Importing a GPT-2-small-sized Hugging Face checkpoint, and decoding with it against a native run of that shape.

    .venv/bin/python -m bench.bench_import [--workdir /tmp/bench_import] [--new-tokens 64]

Builds a random GPT2LMHeadModel (124M parameters, GPT-2's config) with transformers and saves it, times
`python -m mulm_jax convert from-hf` on it as a user runs it (a fresh process, imports included) and reads that
process's peak memory against the checkpoint's size; then runs `bench decode` at batch 1 on the imported run and
on configs/gpt2_small.yaml (random weights, same shape) and prints both ms/step and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORT_LIMIT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


def build_source(folder: Path) -> None:
    """A random GPT-2 small, as transformers' save_pretrained writes it, with a word-level tokenizer of one token per
    id (the engine takes only prompt ids its tokenizer can decode, and bench decode draws them from all 50,257)."""
    import tokenizers
    import torch
    import transformers

    config = transformers.GPT2Config()
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(config.vocab_size - 1)} | {"<|endoftext|>": config.vocab_size - 1}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    ).save_pretrained(folder)


def mulm(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mulm_jax", *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"python -m mulm_jax {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return out.stdout


def decode_ms(*args: str, new_tokens: int) -> float:
    line = mulm("bench", "decode", "--batch", "1", "--new-tokens", str(new_tokens), "--json", *args).splitlines()[-1]
    return json.loads(line)["ms_per_step"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where the checkpoint and the run are written (default: a temporary folder)")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_import_"))
    src, run = work / "gpt2-hf", work / "gpt2-run"
    shutil.rmtree(run, ignore_errors=True)
    if not (src / "config.json").is_file():
        build_source(src)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))

    start = time.perf_counter()
    mulm("convert", "from-hf", str(src), "--out", str(run))
    import_s = time.perf_counter() - start
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu_s = child.ru_maxrss * 1024, child.ru_utime + child.ru_stime
    print(
        f"import: {import_s:.1f} s ({cpu_s:.1f} s of CPU; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores) for a {size / 1e6:.0f} MB checkpoint (limit {IMPORT_LIMIT_S:.0f} s), "
        f"peak memory {peak / 1e6:.0f} MB = {peak / size:.2f}x the checkpoint"
    )

    imported = decode_ms("--checkpoint", str(run), new_tokens=args.new_tokens)
    native = decode_ms("--config", "configs/gpt2_small.yaml", new_tokens=args.new_tokens)
    print(
        f"decode at batch 1: imported {imported:.2f} ms/step, native {native:.2f} ms/step, "
        f"ratio {imported / native:.2f}"
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if import_s < IMPORT_LIMIT_S else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
