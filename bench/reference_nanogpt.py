"""nanoGPT's model and training iteration in PyTorch: the reference bench_train_step (CPU) and the device check time.

    .venv/bin/python -m bench.reference_nanogpt            # this reference alone
    .venv/bin/python -m bench.reference_nanogpt --serve    # read a step count per stdin line, answer its step times
    python -m bench.reference_nanogpt --config configs/shakespeare_char_6x384.yaml --device cuda --steps 300 --json


A minimal, faithful copy of karpathy/nanoGPT model.py (GPT-2 style, no bias, tied weights, SDPA causal attention)
and of train.py's iteration (forward, backward, clip_grad_norm 1.0, AdamW with weight decay on >= 2-D parameters,
zero_grad), by default at the shakespeare_char CPU recipe: 4 layers, 4 heads, width 128, context 64, vocab 65,
batch 12; --config takes the sizes, dropout and batch from one of our configs instead. On a GPU it runs as
nanoGPT's train.py does there: bfloat16 autocast, TF32 matmuls, fused AdamW, and torch.compile with --compile
(train.py's default; its compilation takes a while). Batches are random tokens drawn on the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.nn import functional as F

from mulm_jax.config import ModelConfig, load_config


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop it)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], fused: bool = False
    ) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


def get_lr(
    it: int, learning_rate: float = 1e-3, min_lr: float = 1e-4, warmup_iters: int = 100, lr_decay_iters: int = 2000
) -> float:
    """train.py's schedule: linear warm-up, then cosine decay to min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def gpt_config(cfg: ModelConfig) -> GPTConfig:
    """nanoGPT's config at the sizes of one of ours (a GPT-2-shaped one: learned positions, LayerNorm, GELU)."""
    return GPTConfig(
        block_size=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_embd=cfg.d_model,
        dropout=cfg.dropout,
        bias=cfg.use_bias,
    )


def make_train_iteration(
    batch_size: int = 12, seed: int = 1337, config: GPTConfig = GPTConfig(), device: str = "cpu", compile: bool = False
) -> Callable[[], torch.Tensor]:
    """One call = one nanoGPT training iteration on a fresh random batch; returns the loss (a tensor: on a GPU,
    reading it waits for the iteration)."""
    torch.manual_seed(seed)
    cuda = device.startswith("cuda")
    if cuda:  # as nanoGPT's train.py sets up a GPU
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(config).to(device)
    model.train()
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99), fused=cuda)
    forward = torch.compile(model) if compile else model
    autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    shape = (batch_size, config.block_size)
    iter_num = 0

    def train_iteration() -> torch.Tensor:
        nonlocal iter_num
        x_BxT = torch.randint(config.vocab_size, shape, device=device)
        y_BxT = torch.randint(config.vocab_size, shape, device=device)
        for group in optimizer.param_groups:
            group["lr"] = get_lr(iter_num)
        with autocast:
            _, loss = forward(x_BxT, y_BxT)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        return loss.detach()

    return train_iteration


def time_steps(step: Callable[[], object], steps: int) -> list[float]:
    """Wall seconds of each of `steps` calls."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def serve(step: Callable[[], object]) -> None:
    """For bench_train_step, which runs this in its own process: each stdin line N answers N step times as JSON."""
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        print(json.dumps(time_steps(step, int(line))), flush=True)


def time_run(step: Callable[[], torch.Tensor], steps: int) -> float:
    """Wall seconds of `steps` calls in a row, waiting only for the last (as nanoGPT's loop reads its loss rarely)."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, help="default: 12, or the config's train.batch_size")
    parser.add_argument("--config", help="take the model's sizes, dropout and batch from this config of ours")
    parser.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of --config"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (nanoGPT's GPU default)")
    parser.add_argument("--json", action="store_true", help="one JSON line: the whole run's time per iteration")
    parser.add_argument("--serve", action="store_true", help="answer step-time requests on stdin (see serve)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides) if args.config else None
    config = gpt_config(cfg.model) if cfg else GPTConfig()
    batch_size = args.batch_size or (cfg.train.batch_size if cfg else 12)
    step = make_train_iteration(batch_size, config=config, device=args.device, compile=args.compile)
    if args.serve:
        serve(step)
        return 0
    tokens = batch_size * config.block_size
    if args.json:
        start = time.perf_counter()
        time_run(step, args.warmup)
        warmup_s = time.perf_counter() - start
        seconds = time_run(step, args.steps)
        print(
            json.dumps(
                {
                    "impl": "nanoGPT",
                    "torch": torch.__version__,
                    "device": args.device,
                    "compile": args.compile,
                    "batch": batch_size,
                    "seq_len": config.block_size,
                    "steps": args.steps,
                    "ms_per_iter": seconds / args.steps * 1e3,
                    "tokens_per_sec": tokens * args.steps / seconds,
                    "warmup_s": warmup_s,
                }
            )
        )
        return 0
    time_steps(step, args.warmup)
    median_s = statistics.median(time_steps(step, args.steps))
    print(
        f"nanoGPT (PyTorch {torch.__version__}, {torch.get_num_threads()} threads): "
        f"{median_s * 1e3:.1f} ms/step median, {tokens / median_s:,.0f} tokens/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
