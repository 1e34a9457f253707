"""Named activations: `Tracer.run_with_cache` of every name for a 64-token prompt of the demo model (random weights),
after compilation, against the plain forward pass of the same prompt measured in the same run; and what caching
one name instead of all costs in memory for a larger config (XLA's memory analysis of the compiled pass).

    .venv/bin/python -m bench.bench_activations [--config configs/shakespeare_char.yaml] [--tokens 64]
        [--repeats 20] [--memory-config configs/gpt2_small.yaml --memory-tokens 512]

Target (issue 27): under 100 ms for the demo model's 64-token cache once compiled, with one compilation.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from bench.harness import timed
from mulm_jax.config import load_config
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.infer.cli import random_model
from mulm_jax.infer.loading import LoadedModel
from mulm_jax.inspect import Tracer
from mulm_jax.models import build_model
from mulm_jax.models.info import param_shapes
from mulm_jax.models.layers import per_layer_config
from mulm_jax.platform import configure_process


def cache_memory(config_path: str, tokens: int, names: tuple[str, ...]) -> int:
    """Bytes of output and scratch memory of the compiled cached pass over `tokens` tokens (parameters abstract:
    nothing is initialised)."""
    config = per_layer_config(load_config(config_path))  # as load_model gives a run
    structs = param_shapes(config.model)
    tokenizer = CharTokenizer([chr(0x100 + i) for i in range(config.model.vocab_size)])
    tracer = Tracer(LoadedModel(build_model(config.model), structs, tokenizer, config, 0, None))
    names = tracer.resolve(names)
    ids = np.zeros((1, tokens), np.int32)
    compiled = tracer._activations.lower(
        structs, ids, tokens, None, 0, {}, 0, names=names, with_logprobs=False
    ).compile()
    analysis = compiled.memory_analysis()
    return int(analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shakespeare_char.yaml")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--memory-config", help="also compare the memory of caching one name and every name")
    parser.add_argument("--memory-tokens", type=int, default=512)
    args = parser.parse_args()
    configure_process()
    loaded = random_model(load_config(args.config))
    tracer = Tracer(loaded)
    prompts = [
        np.random.default_rng(seed).integers(0, loaded.config.model.vocab_size, args.tokens).tolist()
        for seed in range(2)
    ]
    start = time.perf_counter()
    cache = tracer.run_with_cache(prompts[0])
    first = time.perf_counter() - start
    cached = timed(lambda: tracer.run_with_cache(prompts[1]), args.repeats)
    forward = jax.jit(lambda params, ids: loaded.model.apply({"params": params}, ids))
    ids = np.asarray([prompts[0]], np.int32)
    jax.block_until_ready(forward(loaded.params, ids))
    floor = timed(lambda: jax.block_until_ready(forward(loaded.params, ids)), args.repeats)
    figures = {
        "config": args.config,
        "tokens": args.tokens,
        "names": len(cache),
        "values": int(sum(a.size for a in cache.values())),
        "compile_and_first_s": round(first, 2),
        "run_with_cache_ms": round(1000 * cached, 2),
        "forward_ms": round(1000 * floor, 2),
        "cache_over_forward": round(cached / floor, 2),
        "compilations": tracer.traces,
        "target_ms": 100,
        "met": cached <= 0.1 and tracer.traces == 1,
    }
    print(
        f"run_with_cache of all {len(cache)} names ({figures['values']:,} values) for {args.tokens} tokens of "
        f"{args.config}: compile + first {first:.2f} s; then {1000 * cached:.1f} ms (median of {args.repeats}); the "
        f"plain forward pass {1000 * floor:.1f} ms -> {cached / floor:.1f}x the forward; {tracer.traces} "
        f"compilation; target <= 100 ms: {'met' if figures['met'] else 'NOT met'}"
    )
    if args.memory_config:
        one = cache_memory(args.memory_config, args.memory_tokens, ("blocks.0.attn.pattern",))
        every = cache_memory(args.memory_config, args.memory_tokens, ("*",))
        figures.update(
            {
                "memory_config": args.memory_config,
                "memory_tokens": args.memory_tokens,
                "one_name_mb": round(one / 2**20, 1),
                "every_name_mb": round(every / 2**20, 1),
            }
        )
        print(
            f"{args.memory_config} at {args.memory_tokens} tokens: caching blocks.0.attn.pattern needs "
            f"{one / 2**20:.0f} MiB of outputs and scratch, every name {every / 2**20:.0f} MiB"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
