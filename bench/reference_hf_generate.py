"""Hugging Face transformers' greedy decode (GPT2LMHeadModel.generate, KV cache, CPU): the decode benchmark's reference.

    .venv/bin/python -m bench.reference_hf_generate --config configs/shakespeare_char_6x384.yaml
    .venv/bin/python -m bench.reference_hf_generate --config configs/gpt2_small.yaml --batch 8 --new-tokens 64
    .venv/bin/python -m bench.reference_hf_generate --config configs/gpt2_small.yaml --serve   # requests on stdin


The model is GPT-2's architecture at the sizes of one of our configs, with random float32 weights. GPT-2 always
has biases (in its projections and LayerNorms), so a config with use_bias: false is timed with them; its GELU is
the tanh approximation, as ours. EOS is the last token id, which min_new_tokens masks, so every call decodes exactly
--new-tokens tokens. Each measurement prints one JSON line; --serve answers one per stdin line, a JSON object with
any of batch, prompt_len, new_tokens, repeats (the rest from the command line), so another process can interleave
rounds with it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from mulm_jax.config import ModelConfig, load_config


def build_model(cfg: ModelConfig) -> GPT2LMHeadModel:
    """GPT-2 at cfg's sizes, random float32 weights, eval mode, CPU."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.ff_dim,
                        layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                        bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    return GPT2LMHeadModel(config).float().eval()


def median_generate_s(model: GPT2LMHeadModel, input_ids: torch.Tensor, new_tokens: int, repeats: int) -> float:
    """Median wall seconds of `repeats` greedy generate calls that each decode exactly `new_tokens` tokens."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def measure(model: GPT2LMHeadModel, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """One warm-up generate, then the medians of `repeats` full calls and of `repeats` one-token calls."""
    input_ids = torch.randint(model.config.vocab_size, (batch, prompt_len))
    median_generate_s(model, input_ids, new_tokens, 1)
    seconds = median_generate_s(model, input_ids, new_tokens, repeats)
    first_token_s = median_generate_s(model, input_ids, 1, repeats)
    return {"impl": "hf-transformers", "transformers": transformers.__version__, "torch": torch.__version__,
            "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "tokens_per_sec": batch * new_tokens / seconds, "ms_per_token": seconds / new_tokens * 1e3,
            "time_to_first_token_ms": first_token_s * 1e3, "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a mulm_jax YAML config; its model section sizes GPT-2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--serve", action="store_true", help="answer one JSON request per stdin line")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = build_model(load_config(args.config).model)
    defaults = {"batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                "repeats": args.repeats}
    requests = (json.loads(line) for line in sys.stdin if line.strip()) if args.serve else [{}]
    for request in requests:
        print(json.dumps(measure(model, **{**defaults, **request})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
