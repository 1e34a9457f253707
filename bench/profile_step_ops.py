"""Where one training step's time goes, op family by op family, forward, backward and optimizer apart: ours (XLA:CPU
kernels from a jax.profiler trace of the trainer's own step, each kernel attributed through its HLO metadata to the
model part and pass it came from) beside nanoGPT's (torch.profiler's self CPU time per aten op) on the
shakespeare_char recipe (12 x 64 tokens, 4 layers x 128), in the same run.

    .venv/bin/pip install -r bench/requirements.txt     # PyTorch, for the nanoGPT reference
    .venv/bin/python -m bench.profile_step_ops [--steps 20] [--json]

Ours: a kernel's pass is read from its op_name (`transpose(jvp(...))`: the backward; `jvp(...)`: the forward;
neither: the optimizer update and the rest of the step), its part from the Flax module path (attention
projections, attention core, feed-forward, norms, embedding and head, loss), its kind from what the fused
computation holds (a dot: matmul; a reduce; a copy or transpose; otherwise elementwise). Kernel times are summed
over XLA's worker threads (so they can exceed the wall time) and divided by the steps. nanoGPT's: self CPU time of
each aten op over the profiled iterations; the backward is what autograd's engine ran, told apart by its
`Backward` parent frames. Both sides run one after the other in separate processes (neither's threads touch the
other's).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/shakespeare_char.yaml"

PARTS = [  # (part, pattern in the op_name's module path), first match wins
    ("attention projections", re.compile(r"self_attention/(query|key|value|out|qkv)\b")),
    ("attention core", re.compile(r"self_attention/")),
    ("feed-forward", re.compile(r"/ffn/")),
    ("norms", re.compile(r"_norm/")),
    ("embedding and head", re.compile(r"embedder")),
    ("loss", re.compile(r"softmax_cross_entropy|log_softmax|logsumexp|argmax|DecoderLM")),
]


def fused_opcodes(hlo: str) -> dict[str, set[str]]:
    """Each computation of the HLO text and the opcodes its instructions use."""
    out: dict[str, set[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            out[name] = set()
        elif name and (m := re.match(r"^\s+(?:ROOT )?%?[\w.\-]+ = \S+ ([\w\-]+)\(", line)):
            out[name].add(m.group(1))
    return out


def instructions(hlo: str) -> dict[str, tuple[str, str]]:
    """Each instruction of the entry computation (and its callees): name -> (kind, op_name)."""
    opcodes = fused_opcodes(hlo)
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if not m:
            continue
        name, opcode = m.groups()
        called = re.search(r"calls=%?([\w.\-]+)", line)
        ops = opcodes.get(called.group(1), set()) if called else {opcode}
        if "dot" in ops or "convolution" in ops or opcode in ("dot", "custom-call"):
            kind = "matmul"
        elif "reduce" in ops or "reduce-window" in ops:
            kind = "reduce"
        elif ops <= {"copy", "transpose", "bitcast", "parameter", "reshape", "broadcast", "slice", "concatenate"}:
            kind = "copy"
        else:
            kind = "elementwise"
        op_name = re.search(r'op_name="([^"]*)"', line)
        out[name] = (kind, op_name.group(1) if op_name else "")
    return out


def classify(op_name: str) -> tuple[str, str]:
    """(pass, part) of a kernel from its op_name."""
    phase = "backward" if "transpose(jvp(" in op_name else "forward" if "jvp(" in op_name else "optimizer and rest"
    if phase == "optimizer and rest":
        return phase, "optimizer and rest"
    part = next((p for p, pattern in PARTS if pattern.search(op_name)), "loss")
    return phase, part


def ours(steps: int) -> dict:
    """Kernel ms per step by (pass, part, kind) for the trainer's step, and the step's wall ms."""
    import time

    import jax

    from bench.bench_train_step import build
    from mulm_jax.config import load_config
    from mulm_jax.startup import start_training

    start_training(load_config(CONFIG).train)
    b = build(CONFIG)
    step, state, batches = b["step"], b["state"], b["batches"]
    kinds = instructions(step.lower(state, batches[0]).compile().as_text())
    for i in range(5):
        state, _ = step(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    trace = tempfile.mkdtemp()
    start = time.perf_counter()
    with jax.profiler.trace(trace, create_perfetto_trace=True):
        for i in range(steps):
            state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(state)
    wall = (time.perf_counter() - start) / steps * 1e3
    events = json.load(gzip.open(sorted(glob.glob(f"{trace}/**/*.trace.json.gz", recursive=True))[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            kind, op_name = kinds[e["name"]]
            totals[(*classify(op_name), kind)] += e["dur"] / 1e3 / steps
    return {"wall_ms": wall, "kernels": {" / ".join(k): round(v, 2) for k, v in totals.items()}}


TORCH_FAMILIES = [  # (kind, aten op names)
    (
        "matmul",
        {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu"},
    ),
    (
        "softmax",
        {"aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax", "aten::_log_softmax_backward_data"},
    ),
    ("norm", {"aten::native_layer_norm", "aten::native_layer_norm_backward"}),
    ("gelu", {"aten::gelu", "aten::gelu_backward"}),
    ("embedding", {"aten::embedding", "aten::embedding_dense_backward", "aten::index_select", "aten::index_add_"}),
    ("loss", {"aten::nll_loss_forward", "aten::nll_loss_backward", "aten::nll_loss2d_forward"}),
    ("copy", {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"}),
]


def nanogpt(steps: int) -> dict:
    """Self CPU ms per step by (pass, op family) for nanoGPT's training iteration, and its wall ms."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.reference_nanogpt import gpt_config, make_train_iteration
    from mulm_jax.config import load_config

    cfg = load_config(CONFIG)
    iteration = make_train_iteration(cfg.train.batch_size, cfg.train.seed, gpt_config(cfg.model))
    for _ in range(5):
        iteration()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            iteration()
    wall = (time.perf_counter() - start) / steps * 1e3
    totals: collections.Counter = collections.Counter()
    events = prof.events()
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        parent, phase = e.cpu_parent, "forward"
        while parent is not None:
            if "Backward" in parent.name or parent.name.startswith("autograd::engine"):
                phase = "backward"
                break
            if "Optimizer.step" in parent.name or "clip_grad" in parent.name or "_foreach" in parent.name:
                phase = "optimizer and rest"
                break
            parent = parent.cpu_parent
        if e.name.startswith("aten::_foreach") or e.name in ("aten::_fused_adamw_",):
            phase = "optimizer and rest"
        family = next((f for f, names in TORCH_FAMILIES if e.name in names), "elementwise and other")
        totals[(phase, family)] += e.self_cpu_time_total / 1e3 / steps
    return {
        "wall_ms": wall,
        "threads": torch.get_num_threads(),
        "ops": {" / ".join(k): round(v, 2) for k, v in totals.items()},
    }


def table(title: str, rows: dict) -> str:
    lines = [title, f"  {'pass / part or family / kind':<62} {'ms/step':>8}"]
    for key, ms in sorted(rows.items(), key=lambda kv: (kv[0].split(" / ")[0], -kv[1])):
        if ms >= 0.05:
            lines.append(f"  {key:<62} {ms:8.2f}")
    by_pass = collections.Counter()
    for key, ms in rows.items():
        by_pass[key.split(" / ")[0]] += ms
    lines.append("  totals by pass: " + ", ".join(f"{p} {ms:.1f}" for p, ms in sorted(by_pass.items())))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", choices=["ours", "nanogpt"], help=argparse.SUPPRESS)  # one side, in its process
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(ours(args.steps) if args.side == "ours" else nanogpt(args.steps)))
        return 0
    result = {}
    for side in ("ours", "nanogpt"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.profile_step_ops", "--side", side, "--steps", str(args.steps)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result[side] = json.loads(out.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        table(
            f"ours: train step {result['ours']['wall_ms']:.1f} ms wall; XLA:CPU kernel ms per step",
            result["ours"]["kernels"],
        )
    )
    print(
        table(
            f"nanoGPT: iteration {result['nanogpt']['wall_ms']:.1f} ms wall; aten self CPU ms per step",
            result["nanogpt"]["ops"],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
