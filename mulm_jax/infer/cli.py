"""`python -m mulm_jax generate` (stream a continuation from a trained run) and `bench decode` (decode speed)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from mulm_jax import startup
from mulm_jax.config import add_config_arguments, config_from_args


BEAM_SETTINGS = ("num_beams", "length_penalty", "early_stopping")


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser("generate", help="stream a continuation of a prompt from a trained run")
    gen.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a train.py --workdir")
    gen.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    text = gen.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="the text to continue")
    text.add_argument(
        "--source",
        help="an encoder-decoder trained on pairs: the source to generate the target of "
        "(its prompt, read by the encoder)",
    )
    gen.add_argument("--max-tokens", type=int, help="default: 256, or what the context leaves")
    gen.add_argument("--temperature", type=float, default=0.8, help="0: greedy (beam search ignores it)")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[], metavar="STR", help="stop before this text (repeatable)")
    # The beam search settings default to SamplingParams' (None: not given).
    gen.add_argument(
        "--num-beams",
        type=int,
        metavar="K",
        help="beam search over K beams, printing the best hypothesis (default 1: sample, or greedy)",
    )
    gen.add_argument(
        "--length-penalty",
        type=float,
        metavar="ALPHA",
        help="beam search ranks by log P / ((5 + length) / 6) ** ALPHA (default 0.6)",
    )
    gen.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        help="end the search once no beam can beat those kept; the result is the same (default: on)",
    )
    gen.add_argument(
        "--all-beams",
        action="store_true",
        help="then every hypothesis kept, best first, as JSON lines (text, score, logprob, ...)",
    )
    gen.add_argument("--int8", action="store_true", help="int8 weights")
    startup.add_startup_arguments(gen)
    gen.set_defaults(func=run_generate)

    bench = subparsers.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    dec = bench.add_parser("decode", help="decode speed, with random weights unless --checkpoint is given")
    add_config_arguments(dec)
    dec.add_argument("--checkpoint", metavar="RUN_DIR")
    dec.add_argument("--batch", type=int, default=1, help="concurrent sequences (and slots)")
    dec.add_argument("--prompt-len", type=int, default=16)
    dec.add_argument("--new-tokens", type=int, default=128)
    dec.add_argument("--repeats", type=int, default=5)
    dec.add_argument(
        "--max-len",
        type=int,
        help="positions per slot (default: prompt + new tokens; a server keeps the model's whole context)",
    )
    dec.add_argument("--int8", action="store_true")
    dec.add_argument(
        "--bandwidth-mb",
        type=int,
        default=512,
        help="size of the matrix whose jitted GEMV measures the read bandwidth, the limit (0: skip it)",
    )
    dec.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    startup.add_startup_arguments(dec)
    dec.set_defaults(func=run_bench_decode)


def run_generate(args: argparse.Namespace) -> int:
    startup.start(args)
    from mulm_jax.infer import Engine, InferenceError, SamplingParams, load_model

    loaded = load_model(args.checkpoint, args.step)
    engine = Engine(loaded, slots=1, int8=args.int8)
    if args.source is not None and loaded.decoder_start is None:
        raise InferenceError(
            f"--source is for an encoder-decoder trained on pairs; {args.checkpoint} is "
            f"{'a decoder' if loaded.config.model.architecture == 'decoder' else 'trained on text'}: "
            "give its text with --prompt"
        )
    prompt = args.prompt if args.source is None else args.source
    prompt_len = len(engine.encode_prompt(prompt, 1))
    max_tokens = args.max_tokens or max(1, min(256, engine.max_len - prompt_len))
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        **{name: getattr(args, name) for name in BEAM_SETTINGS if getattr(args, name) is not None},
    )
    with engine:
        request = engine.submit(prompt, params)
        for event in request:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        completion = request.result()
    sys.stdout.write("\n")
    if args.all_beams:
        for h in completion.hypotheses or ():
            print(
                json.dumps(
                    {
                        "text": hypothesis_text(engine, request, h),
                        "score": h.score,
                        "logprob": h.logprob,
                        "tokens": len(h.token_ids),
                        "finish_reason": h.finish_reason,
                    }
                )
            )
    print(f"[{completion.completion_tokens} tokens, finish: {completion.finish_reason}]", file=sys.stderr)
    return 0


def hypothesis_text(engine: Any, request: Any, h: Any) -> str:
    """A beam search hypothesis's text as the engine gives a completion's: cut at a stop string, no end token."""
    from mulm_jax.infer.detokenize import CompletionText

    text = CompletionText(engine.tokenizer, request.prompt_ids, request.params.stop)
    for i, token in enumerate(h.token_ids):
        if text.stopped:
            break
        last = i == len(h.token_ids) - 1
        if last and h.finish_reason == "stop":
            text.stop_token(token)
        else:
            text.add(token, final=last)
    return text.text


def random_model(config: Any, seed: int = 0) -> Any:
    """A LoadedModel with randomly initialized weights (per layer, as a run loads) and a tokenizer of one character
    per id."""
    import jax

    from mulm_jax.data.tokenizer import CharTokenizer
    from mulm_jax.infer.loading import LoadedModel
    from mulm_jax.models import build_model
    from mulm_jax.models.info import param_shapes
    from mulm_jax.models.layers import per_layer_config

    config = per_layer_config(config)
    model = build_model(config.model)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: (rng.standard_normal(s.shape, np.float32) * 0.02).astype(s.dtype), param_shapes(config.model)
    )
    tokenizer = CharTokenizer([chr(0x100 + i) for i in range(config.model.vocab_size)])
    return LoadedModel(model=model, params=params, tokenizer=tokenizer, config=config, step=0, run_dir=None)


def gemv_bandwidth_gb_s(size_mb: int = 512, repeats: int = 9) -> float:
    """Read bandwidth, GB/s: the median over `repeats` of a jitted x @ W over a size_mb float32 W [size_mb * 2**20 /
    16384, 4096] (bytes of W over seconds), after a warm-up. A decode step that reads its weights once can go no
    faster than their bytes at this rate."""
    import jax
    import jax.numpy as jnp

    w_IxO = jnp.ones((size_mb * 2**20 // 4 // 4096, 4096), jnp.float32)
    x_1xI = jnp.ones((1, w_IxO.shape[0]), jnp.float32)
    product = jax.jit(lambda x, w: x @ w)
    product(x_1xI, w_IxO).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(x_1xI, w_IxO).block_until_ready()
        times.append(time.perf_counter() - start)
    return w_IxO.nbytes / statistics.median(times) / 1e9


def measure_decode(
    engine: Any, batch: int, prompt_len: int, new_tokens: int, repeats: int, seed: int = 0
) -> dict[str, float]:
    """Median figures over `repeats` rounds of `batch` greedy requests submitted together (after a warm-up)."""
    from mulm_jax.infer import SamplingParams

    vocab = engine.loaded.config.model.vocab_size
    rng = np.random.default_rng(seed)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    rounds = []
    for _ in range(repeats + 1):
        prompts = [rng.integers(0, vocab, prompt_len).tolist() for _ in range(batch)]
        start = time.perf_counter()
        requests = [engine.submit(p, params) for p in prompts]
        results = [r.result() for r in requests]
        total = time.perf_counter() - start
        first = max(r.time_to_first_token_s for r in results)
        rounds.append(
            {
                "tokens_per_sec": batch * new_tokens / total,
                "ms_per_step": (total - first) / max(new_tokens - 1, 1) * 1e3,
                "time_to_first_token_ms": statistics.median(r.time_to_first_token_s for r in results) * 1e3,
            }
        )
    rounds = rounds[1:]  # the first round settles threads and caches
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def run_bench_decode(args: argparse.Namespace) -> int:
    startup.start(args)
    import jax

    from mulm_jax import platform
    from mulm_jax.infer import Engine, load_model
    from mulm_jax.infer.quantize import weight_bytes

    loaded = load_model(args.checkpoint) if args.checkpoint else random_model(config_from_args(args))
    cfg = loaded.config.model
    needed = args.prompt_len + args.new_tokens
    max_len = min(cfg.max_seq_len, args.max_len or needed)
    if max_len < needed:
        print(
            f"error: --prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} need {needed} positions, "
            f"but slots have {max_len} (the model's context is {cfg.max_seq_len}, --max-len {args.max_len})",
            file=sys.stderr,
        )
        return 2
    engine = Engine(loaded, slots=args.batch, max_len=max_len, max_queue=args.batch, int8=args.int8)
    start = time.perf_counter()
    engine.warmup()
    compile_s = time.perf_counter() - start
    with engine:
        figures = measure_decode(engine, args.batch, args.prompt_len, args.new_tokens, args.repeats)
        compilations = engine.stats().compilations
    result = {
        "model": f"{cfg.num_layers}x{cfg.d_model}, vocab {cfg.vocab_size}",
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "int8": args.int8,
        **{k: round(v, 3) for k, v in figures.items()},
        "compilations": compilations,
        "warmup_s": round(compile_s, 2),
        "weight_bytes": weight_bytes(engine.params),
        "serving_dtype": str(engine.steps.cfg.dtype),
        "peak_device_memory_bytes": platform.peak_device_memory(),
        "device": jax.devices()[0].device_kind,
    }
    if args.bandwidth_mb:  # after the engine has stopped, so that the two never share the memory bus
        bandwidth = gemv_bandwidth_gb_s(args.bandwidth_mb)
        limit = args.batch * bandwidth * 1e9 / result["weight_bytes"]  # every step reads every weight once
        result.update(
            bandwidth_gb_s=round(bandwidth, 2),
            limit_tokens_per_sec=round(limit, 1),
            fraction_of_limit=result["tokens_per_sec"] / limit,
        )
    if not args.json:
        limit = (
            (
                f", {result['fraction_of_limit']:.0%} of the bandwidth limit ({result['limit_tokens_per_sec']:.0f} "
                f"tokens/s at {result['bandwidth_gb_s']:.1f} GB/s)"
            )
            if args.bandwidth_mb
            else ""
        )
        print(
            f"decode {result['model']}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens: "
            f"{result['tokens_per_sec']:.1f} tokens/s, {result['ms_per_step']:.2f} ms/step, "
            f"first token {result['time_to_first_token_ms']:.1f} ms, {compilations} compilations{limit}"
        )
    print(json.dumps(result))
    return 0
