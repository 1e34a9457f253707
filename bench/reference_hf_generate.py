"""Hugging Face transformers' greedy decode (`generate` with its KV cache): the decode benchmark's reference.

    .venv/bin/python -m bench.reference_hf_generate --config configs/shakespeare_char_6x384.yaml
    .venv/bin/python -m bench.reference_hf_generate --config configs/gpt2_small.yaml --batch 8 --new-tokens 64
    .venv/bin/python -m bench.reference_hf_generate --config configs/gpt2_small.yaml --serve   # requests on stdin
    python -m bench.reference_hf_generate --config configs/mulm_1gb.yaml --device cuda --dtype bfloat16 [--cache static]


The model is GPT-2's architecture at the sizes of one of our configs (LlamaForCausalLM's for a Llama-shaped one:
RMSNorm, SwiGLU, RoPE), with random weights (float32 unless --dtype). GPT-2 always has biases (in its projections
and LayerNorms), so a config with use_bias: false is timed with them; its GELU is the tanh approximation, as ours.
EOS is the last token id, which min_new_tokens masks, so every call decodes exactly --new-tokens tokens. --cache
static preallocates the cache (transformers then compiles the step with torch.compile on a GPU). Each measurement
prints one JSON line; --serve answers one per stdin line, a JSON object with any of batch, prompt_len, new_tokens,
repeats (the rest from the command line), so another process can interleave rounds with it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from mulm_jax.config import ModelConfig, load_config


def llama_shaped(cfg: ModelConfig) -> bool:
    return cfg.norm == "rmsnorm" and cfg.ffn == "swiglu" and cfg.positional == "rope"


def build_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32, device: str = "cpu") -> PreTrainedModel:
    """GPT-2 (or Llama, for a Llama-shaped config) at cfg's sizes, random weights in `dtype` on `device`, eval mode."""
    torch.manual_seed(0)
    eos = dict(bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    if llama_shaped(cfg):
        config = LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.ff_dim,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            rms_norm_eps=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings,
            attention_bias=cfg.use_bias,
            mlp_bias=cfg.use_bias,
            **eos,
        )
        architecture = LlamaForCausalLM
    else:
        config = GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.max_seq_len,
            n_embd=cfg.d_model,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.ff_dim,
            layer_norm_epsilon=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            **eos,
        )
        architecture = GPT2LMHeadModel
    with torch.device(device):  # initialized where it runs: a 1 GB model's random init is slow on the host
        return architecture(config).to(dtype).eval()


def median_generate_s(
    model: PreTrainedModel, input_ids: torch.Tensor, new_tokens: int, repeats: int, cache: str = "dynamic"
) -> float:
    """Median wall seconds of `repeats` greedy generate calls that each decode exactly `new_tokens` tokens."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            **({} if cache == "dynamic" else {"cache_implementation": cache}),
        )
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def measure(
    model: PreTrainedModel, batch: int, prompt_len: int, new_tokens: int, repeats: int, cache: str = "dynamic"
) -> dict:
    """One warm-up generate, then the medians of `repeats` full calls and of `repeats` one-token calls."""
    input_ids = torch.randint(model.config.vocab_size, (batch, prompt_len), device=model.device)
    start = time.perf_counter()
    median_generate_s(model, input_ids, new_tokens, 1, cache)
    warmup_s = time.perf_counter() - start
    seconds = median_generate_s(model, input_ids, new_tokens, repeats, cache)
    first_token_s = median_generate_s(model, input_ids, 1, repeats, cache)
    return {
        "impl": "hf-transformers",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": type(model).__name__,
        "device": str(model.device),
        "dtype": str(model.dtype).split(".")[-1],
        "cache": cache,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "tokens_per_sec": batch * new_tokens / seconds,
        "ms_per_token": seconds / new_tokens * 1e3,
        "time_to_first_token_ms": first_token_s * 1e3,
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a mulm_jax YAML config; its model section sizes GPT-2")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. model.num_layers=2",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--cache", default="dynamic", choices=("dynamic", "static"))
    parser.add_argument("--serve", action="store_true", help="answer one JSON request per stdin line")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = build_model(load_config(args.config, args.overrides).model, getattr(torch, args.dtype), args.device)
    defaults = {
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "cache": args.cache,
    }
    requests = (json.loads(line) for line in sys.stdin if line.strip()) if args.serve else [{}]
    for request in requests:
        print(json.dumps(measure(model, **{**defaults, **request})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
