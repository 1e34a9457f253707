"""A training-memory plan: what one train step holds on its device (parameters, gradients, optimizer state,
activations, logits), estimated from the config alone, and the largest batch that fits a card.

The state (parameters and optimizer state) is counted exactly, from their shapes. What the step adds (XLA's
temporary buffers) is a model: per token of the batch and per layer, the activations the backward pass keeps (so
many vectors of the model width, of the feed-forward width, and of the attention scores [H, S] where attention
is dense), the logits [tokens, V] with their gradient, the float32 gradients, and the parameters cast to the
compute dtype (the optimizer's update runs in place, on donated buffers). Its coefficients were measured from XLA's buffer assignment of the compiled step
(`memory_analysis()`, on the CPU; tests/train/test_memory.py holds the plan within 15% of it for the demo,
llama_tiny and mulm_1gb). On a GPU XLA fuses more, so there the plan errs high.

With remat the backward keeps only each layer's input and recomputes one layer at a time. (XLA:CPU honours it
for a scanned stack, model.scan_layers; with the layers unrolled it schedules the recomputation early and the
peak does not fall: the plan then counts every layer's activations, as the CPU holds them.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from mulm_jax import platform
from mulm_jax.config import Config
from mulm_jax.models.masks import attention_pattern, whole_pass_implementation
from mulm_jax.nn.efficient_attention import QUERY_BLOCK

# Fitted to XLA's buffer assignment of the compiled train step on the CPU (bench/memory_plan.py: 27 steps of the
# demo, llama_tiny, gpt2_small, the 6 x 384 model and mulm_1gb varied in layers, widths, heads, length, batch,
# vocabulary, dropout, remat, scanning and attention; the plan is within 12% of each). Per token of a layer:
WIDTH_VECTORS = 13.1  # vectors of d_model (the residual stream, the norms' outputs, q / k / v, z, their gradients)
FF_VECTORS = 2.8  # vectors of the feed-forward's hidden width (swiglu: both halves)
SCORE_ROWS = 2.6  # rows of one head's float32 scores [S] (the probabilities and more): dense attention only
DROPOUT_WIDTH_VECTORS = 7.3  # with dropout, more vectors of d_model (the dropouts' masks and scaled values)
DROPOUT_SCORE_ROWS = 0.6  # with dropout, more score rows (the attention dropout's)
# Per token of the batch: rows of the float32 logits [V] at the peak (the logits and their gradient).
LOGIT_ROWS = 1.8
SCANNED_KEPT = 1.65  # a scanned stack without remat keeps its per-layer values stacked, and copies of them


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds for a train step, by what holds them."""

    parameters: int
    optimizer_state: int
    gradients: int
    compute_copy: int  # the parameters cast to a 16-bit train.compute_dtype
    activations: int
    logits: int
    attention: str  # the self-attention implementation the step runs (platform.attention_implementation)

    @property
    def total(self) -> int:
        return (
            self.parameters + self.optimizer_state + self.gradients + self.compute_copy + self.activations + self.logits
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total}


def _bytes(tree: Any) -> int:
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def attention_for(config: Config, batch: int, seq_len: int, backend: str) -> str:
    """The self-attention implementation a training step at batch x seq_len runs on `backend`: the model's own
    choice (models.masks) for its compute dtype, dense with dropout (it applies to the probabilities)."""
    cfg = dataclasses.replace(config.model, dtype=config.train.compute_dtype)  # as run_steps builds the model
    if cfg.dropout > 0:
        return "dense"
    pos = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    return whole_pass_implementation(cfg, attention_pattern(cfg, pos, pos, causal=True, contiguous=True), backend)


def training_memory(
    config: Config, batch: int, seq_len: int, *, remat: Optional[bool] = None, backend: Optional[str] = None
) -> MemoryPlan:
    """The memory plan of one device's train step at `batch` x `seq_len` (the config's train.remat unless
    `remat` is given), its attention chosen as on `backend` ("cpu", "gpu"; default: this one)."""
    from mulm_jax.train.loop import run_steps  # the run's own model, optimizer and state shapes

    backend = backend or platform.backend()
    remat = config.train.remat if remat is None else remat
    cfg, tc = config.model, config.train
    steps = run_steps(dataclasses.replace(config, train=dataclasses.replace(tc, remat=remat)), None, seq_len)
    params, opt_state = steps.state_shapes.params, steps.state_shapes.opt_state
    param_bytes = _bytes(params)
    act_bytes = jnp.dtype(tc.compute_dtype).itemsize
    tokens = batch * seq_len * (2 if cfg.architecture == "encoder_decoder" else 1)
    layers = cfg.encoder_layers + cfg.decoder_layers if cfg.architecture == "encoder_decoder" else cfg.num_layers
    ff = cfg.ff_dim * (2 if cfg.ffn == "swiglu" else 1) if cfg.mlp == "ffn" else 0
    attention = attention_for(config, batch, seq_len, backend)
    keys = seq_len if cfg.attention != "sliding_window" else min(seq_len, cfg.sliding_window)
    score_rows = {"dense": SCORE_ROWS * keys, "blockwise": 0.0, "cudnn": 0.0}[attention]
    width = WIDTH_VECTORS
    if cfg.dropout > 0:  # the dropouts' masks, and the attention dropout's on its dense scores
        score_rows, width = score_rows + DROPOUT_SCORE_ROWS * keys, width + DROPOUT_WIDTH_VECTORS
    per_layer = tokens * ((width * cfg.d_model + FF_VECTORS * ff) * act_bytes + 4 * cfg.num_heads * score_rows)
    transient = 0  # blockwise attention: the scores of one block of queries, recomputed in the backward pass
    if attention == "blockwise":
        transient = 4 * SCORE_ROWS * batch * cfg.num_heads * min(QUERY_BLOCK, seq_len) * keys
    if remat and cfg.scan_layers:
        activations = layers * tokens * cfg.d_model * act_bytes + per_layer
    else:
        activations = layers * per_layer * (SCANNED_KEPT if cfg.scan_layers else 1.0)
    compute_copy = param_bytes // 2 if jnp.dtype(tc.compute_dtype).itemsize == 2 else 0
    return MemoryPlan(
        parameters=param_bytes,
        optimizer_state=_bytes(opt_state),
        gradients=param_bytes,
        compute_copy=compute_copy,
        activations=int(activations + transient),
        logits=int(LOGIT_ROWS * 4 * batch * seq_len * cfg.vocab_size),
        attention=attention,
    )


def compiled_memory(config: Config, batch: int, seq_len: int) -> int:
    """What XLA's buffer assignment of the run's compiled train step at batch x seq_len holds on this backend
    (arguments, the state donated and so updated in place, plus temporaries): the figure the plan estimates."""
    from mulm_jax.train.loop import _compile_train_step, run_steps

    steps = run_steps(config, None, seq_len)
    window = ((batch, seq_len), jnp.int32)
    compiled = _compile_train_step(
        steps.train_step, steps.state_shapes, steps.mesh, {"inputs": window, "targets": window}
    )
    analysis = compiled.memory_analysis()
    return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes)


def largest_batches(
    config: Config,
    seq_len: int,
    budgets_bytes: Sequence[int],
    *,
    remat: Optional[bool] = None,
    backend: Optional[str] = None,
) -> list[int]:
    """The largest batch of seq_len windows whose plan fits each of `budgets_bytes` (0: not even one). The plan is
    the state plus a part linear in the batch, so two plans give every budget's (the attention implementation is
    the one a batch of 1 would run: at larger batches `auto` may turn blockwise, which only lowers the figure)."""
    one, two = (training_memory(config, b, seq_len, remat=remat, backend=backend).total for b in (1, 2))
    per_sequence = two - one
    return [max(0, (budget - (one - per_sequence)) // per_sequence) for budget in budgets_bytes]


def size(n: float) -> str:
    """Bytes in GB, MB or KB (powers of 1000, as cards are sold)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def plan_lines(config: Config, batch: int, seq_len: int, plan: MemoryPlan, remat: bool, backend: str) -> list[str]:
    """The plan in words, part by part."""
    tc = config.train
    parts = [
        ("parameters", plan.parameters, "float32"),
        ("optimizer state", plan.optimizer_state, tc.optimizer),
        ("gradients", plan.gradients, "float32"),
        ("compute copy", plan.compute_copy, f"the parameters in {tc.compute_dtype}" if plan.compute_copy else ""),
        ("activations", plan.activations, f"{tc.compute_dtype}, attention {plan.attention}"),
        ("logits", plan.logits, "float32, with their gradient"),
    ]
    lines = [
        f"training memory of one step at {batch} x {seq_len} tokens (remat {'on' if remat else 'off'}, "
        f"planned for {backend}):"
    ]
    lines += [f"  {name:<16} {size(n):>10}  {note}".rstrip() for name, n, note in parts]
    lines.append(f"  {'total':<16} {size(plan.total):>10}")
    return lines
