"""Interventions on a loaded run, through the hook points: ablating heads and neurons, patching activations from
another prompt, and direct logit attribution (each head's and MLP's share of one logit), as tables of numbers."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from mulm_jax.inspect.activations import ActivationCache, Edit
from mulm_jax.inspect.trace import InspectError, Tracer

MODES = ("zero", "mean")
BATCH = 32  # edited copies of a prompt per forward pass: one compilation serves every chunk


def check_layer_head(tracer: Tracer, layer: int, head: Optional[int] = None) -> None:
    """A layer (and head) of the decoder, or an error naming the range."""
    L, H = tracer.cfg.decoder_layers, tracer.cfg.num_heads
    if not 0 <= layer < L:
        raise InspectError(f"layer {layer} is out of range: this model has layers 0 to {L - 1}", "layer")
    if head is not None and not 0 <= head < H:
        raise InspectError(f"head {head} is out of range: this model has heads 0 to {H - 1}", "head")


def check_position(position: int, length: int) -> int:
    """A position of a sequence of `length` tokens (negative: from the end), or an error naming the range."""
    if not -length <= position < length:
        raise InspectError(
            f"position {position} is out of range: the prompt has positions 0 to {length - 1} "
            f"(or -{length} to -1 from the end)",
            "position",
        )
    return position % length


def _ablated(values_N: np.ndarray, mode: str, mean: Optional[np.ndarray]) -> Edit:
    """scale 0 where `values_N` (a 0/1 mask broadcastable to the activation) is 1; mean mode adds the mean back."""
    if mode not in MODES:
        raise InspectError(f"ablation mode {mode!r} is not one of {', '.join(MODES)}", "mode")
    if mode == "mean" and mean is None:
        raise InspectError("mean ablation needs the clean run's cache to take the mean from")
    return Edit(scale=1.0 - values_N, shift=0.0 if mode == "zero" else values_N * mean)


def head_edits(
    tracer: Tracer, heads: Sequence[tuple[int, int]], mode: str = "zero", cache: Optional[ActivationCache] = None
) -> dict[str, Edit]:
    """Edits that ablate (layer, head) pairs of the decoder's self-attention: the head's z (its weighted sum of V) set
    to zero, or to its mean over the prompt's positions in `cache` (which must hold blocks.{l}.attn.z)."""
    H = tracer.cfg.num_heads
    by_layer: dict[int, np.ndarray] = {}
    for layer, head in heads:
        check_layer_head(tracer, layer, head)
        by_layer.setdefault(layer, np.zeros((1, H, 1), np.float32))[0, head, 0] = 1.0
    return {
        f"blocks.{layer}.attn.z": _ablated(
            mask_1xHx1, mode, None if cache is None else cache[f"blocks.{layer}.attn.z"].mean(axis=0, keepdims=True)
        )
        for layer, mask_1xHx1 in by_layer.items()
    }


def neuron_edits(
    tracer: Tracer, neurons: Sequence[tuple[int, int]], mode: str = "zero", cache: Optional[ActivationCache] = None
) -> dict[str, Edit]:
    """Edits that ablate (layer, neuron) pairs of the MLPs: the neuron's activation (mlp.post) set to zero or to its
    mean over the prompt's positions in `cache`."""
    F = tracer.cfg.ff_dim
    if tracer.cfg.mlp == "none":
        raise InspectError("this model has no MLPs (model.mlp=none, attention-only blocks): no neurons to ablate")
    by_layer: dict[int, np.ndarray] = {}
    for layer, neuron in neurons:
        check_layer_head(tracer, layer)
        if not 0 <= neuron < F:
            raise InspectError(f"neuron {neuron} is out of range: this model's MLPs have neurons 0 to {F - 1}")
        by_layer.setdefault(layer, np.zeros((1, F), np.float32))[0, neuron] = 1.0
    return {
        f"blocks.{layer}.mlp.post": _ablated(
            mask_1xF, mode, None if cache is None else cache[f"blocks.{layer}.mlp.post"].mean(axis=0, keepdims=True)
        )
        for layer, mask_1xF in by_layer.items()
    }


def patch_edit(source: ActivationCache, name: str, positions: Optional[Sequence[int]] = None) -> Edit:
    """An edit that writes `source`'s value of `name` over this run's, at `positions` of the T axis (default: all)."""
    value = source[name]
    letters = source.letters[name].split("x")
    if positions is None:
        return Edit(scale=0.0, shift=value)
    where = np.zeros(value.shape[letters.index("T")], np.float32)
    where[list(positions)] = 1.0
    shape = [1] * len(letters)
    shape[letters.index("T")] = len(where)
    where = where.reshape(shape)
    return Edit(scale=1.0 - where, shift=where * value)


def _answer(tracer: Tracer, token: Optional[str | int], logprobs_V: np.ndarray) -> int:
    """The token a metric follows: an id, a text of one token, or (None) the model's top prediction."""
    if token is None:
        return int(np.argmax(logprobs_V[: tracer.tokenizer.vocab_size]))
    if isinstance(token, str):
        ids = tracer.tokenizer.encode(token)
        if len(ids) != 1:
            raise InspectError(
                f"token {token!r} is {len(ids)} tokens for this tokenizer: expected exactly one", "token"
            )
        return ids[0]
    if not 0 <= token < tracer.tokenizer.vocab_size:
        raise InspectError(
            f"token id {token} is outside the tokenizer's vocabulary [0, {tracer.tokenizer.vocab_size})", "token"
        )
    return int(token)


def _batched(tracer: Tracer, ids, source, edits_per_row: list[dict[str, Edit]], position: int) -> np.ndarray:
    """Next-token log-probabilities [N, V] at `position` of one run per row of edits, BATCH rows a pass (the last
    chunk filled with unedited rows, so every pass has one shape)."""
    names = sorted({name for row in edits_per_row for name in row})
    rows = []
    for start in range(0, len(edits_per_row), BATCH):
        chunk = edits_per_row[start : start + BATCH]
        chunk = chunk + [{}] * (BATCH - len(chunk))
        edits = {name: [row.get(name, Edit()) for row in chunk] for name in names}
        rows.append(tracer.run_batch(ids, source, (), edits, logprobs_at=position)["logprobs"])
    return np.concatenate(rows)[: len(edits_per_row)]


@dataclass(frozen=True)
class AblationTable:
    """The change in the log-probability of `token` after `position` when each head is ablated in turn."""

    token: int
    position: int
    mode: str
    logprob: float  # unablated
    delta_LxH: np.ndarray  # ablated minus unablated


def ablate_each_head(
    tracer: Tracer, prompt, *, token: Optional[str | int] = None, position: int = -1, mode: str = "zero", target=None
) -> AblationTable:
    """Each head of the decoder's self-attention ablated alone (zero or mean over the prompt's positions): how much
    the log-probability of `token` (default: the model's top prediction) after `position` changes."""
    ids, source = tracer.sequences(prompt, target)
    position = check_position(position, len(ids))
    L, H = tracer.cfg.decoder_layers, tracer.cfg.num_heads
    cache = tracer.run_with_cache(prompt, ["blocks.*.attn.z"], target=target) if mode == "mean" else None
    rows = [{}] + [head_edits(tracer, [(layer, head)], mode, cache) for layer in range(L) for head in range(H)]
    logprobs_NxV = _batched(tracer, ids, source, rows, position)
    answer = _answer(tracer, token, logprobs_NxV[0])
    base = float(logprobs_NxV[0, answer])
    return AblationTable(answer, position, mode, base, (logprobs_NxV[1:, answer] - base).reshape(L, H))


@dataclass(frozen=True)
class PatchTable:
    """Activation patching of the residual stream: the log-probability of `token` after the last position of the
    corrupt prompt when blocks.{l}.resid_pre at one position is taken from the clean prompt's run."""

    token: int
    clean_logprob: float
    corrupt_logprob: float
    patched_LxT: np.ndarray
    clean_ids_T: np.ndarray
    corrupt_ids_T: np.ndarray

    @property
    def restored_LxT(self) -> np.ndarray:
        """(patched - corrupt) / (clean - corrupt): 1 where patching one place restores the clean prediction."""
        gap = self.clean_logprob - self.corrupt_logprob
        return (self.patched_LxT - self.corrupt_logprob) / gap if abs(gap) > 1e-9 else np.zeros_like(self.patched_LxT)


def patch_residual(tracer: Tracer, clean, corrupt, *, token: Optional[str | int] = None) -> PatchTable:
    """Patch the clean run's residual stream (each layer's input, at each position in turn) into the corrupt run, and
    read the log-probability of `token` (default: the clean run's top prediction) after the last position."""
    if tracer.encoder_decoder:
        raise InspectError("patching the residual stream is for decoder-only models")
    clean_ids, corrupt_ids = tracer.encode(clean, "clean"), tracer.encode(corrupt, "corrupt")
    if len(clean_ids) != len(corrupt_ids):
        raise InspectError(
            f"the clean prompt has {len(clean_ids)} tokens and the corrupt one {len(corrupt_ids)}: "
            "patching compares the same positions, so both must have the same number of tokens",
            "corrupt",
        )
    T, L = len(clean_ids), tracer.cfg.decoder_layers
    clean_cache = tracer.run_with_cache(clean_ids, ["blocks.*.resid_pre"])
    rows = [{}] + [
        {f"blocks.{layer}.resid_pre": patch_edit(clean_cache, f"blocks.{layer}.resid_pre", [t])}
        for layer in range(L)
        for t in range(T)
    ]
    logprobs_NxV = _batched(tracer, corrupt_ids, None, rows, T - 1)
    clean_V = tracer.run_batch(clean_ids, None, (), {}, logprobs_at=T - 1)["logprobs"][0]
    answer = _answer(tracer, token, clean_V)
    return PatchTable(
        answer,
        float(clean_V[answer]),
        float(logprobs_NxV[0, answer]),
        logprobs_NxV[1:, answer].reshape(L, T),
        np.asarray(clean_ids),
        np.asarray(corrupt_ids),
    )


@dataclass(frozen=True)
class Attribution:
    """Direct logit attribution: each component's share of the logit of `token` at `position` (the logit before any
    softcap). The components are what the residual stream sums (embeddings, each head's output, each attention
    output's bias, each MLP), each put through the final norm with its scale factor frozen, and the norm's bias."""

    token: int
    position: int
    labels: list[str]
    values: np.ndarray
    logit: float  # the model's logit (after a softcap, where the model has one)

    @property
    def total(self) -> float:
        return float(self.values.sum())


def logit_attribution(
    tracer: Tracer, prompt, *, token: Optional[str | int] = None, position: int = -1, target=None
) -> Attribution:
    """Each head's and MLP's direct contribution to the logit of `token` (default: the model's top prediction) at
    `position`, through the final norm's scale (the sum of the contributions is the logit)."""
    cfg = tracer.cfg
    if cfg.norm_position != "pre":
        raise InspectError(
            "direct logit attribution needs a pre-norm model: in a post-norm one every layer's norm "
            "rescales the residual stream, which is then no sum of the layers' outputs"
        )
    if not cfg.residual:
        raise InspectError(
            "direct logit attribution needs residual connections: with model.residual=false each sublayer's output "
            "replaces the stream, which is then no sum of the layers' outputs"
        )
    ids, _ = tracer.sequences(prompt, target)
    position = check_position(position, len(ids))
    parts = ["embed", "pos_embed", "blocks.*.attn.head_out", "blocks.*.cross_attn.head_out", "blocks.*.mlp.out"]
    names = [p for p in parts if any(fnmatch.fnmatchcase(n, p) for n in tracer.names)]
    cache = tracer.run_with_cache(prompt, names + ["ln_final.scale_factor", "logits"], target=target)
    answer = _answer(tracer, token, cache["logits"][position])
    params = tracer.loaded.params
    embedder = params["embedder"]
    u_D = (
        np.asarray(embedder["token"]["embedding"])[answer]
        if cfg.tie_embeddings
        else np.asarray(embedder["head"]["kernel"])[:, answer]
    ).astype(np.float64)
    norm = params["decoder"]["final_norm"]
    factor = float(cache["ln_final.scale_factor"][position, 0])
    direction_D = u_D * np.asarray(norm["scale"], np.float64) * factor

    def through_norm(x_D: np.ndarray) -> float:
        x_D = np.asarray(x_D, np.float64)
        if cfg.norm == "layernorm":
            x_D = x_D - x_D.mean()
        return float(x_D @ direction_D)

    labels, values = [], []
    for name in ("embed", "pos_embed"):
        if name in cache:
            labels.append(name)
            values.append(through_norm(cache[name][position]))
    for layer in range(cfg.decoder_layers):
        block = params["decoder"][f"layer_{layer}"]
        for part in ("attn", "cross_attn"):
            name = f"blocks.{layer}.{part}.head_out"
            if name not in cache:
                continue
            for head in range(cfg.num_heads):
                labels.append(f"{layer}.{part}.{head}")
                values.append(through_norm(cache[name][position, head]))
            bias = block["self_attention" if part == "attn" else "cross_attention"]["out"].get("bias")
            if bias is not None:
                labels.append(f"{layer}.{part}.bias")
                values.append(through_norm(bias))
        if cfg.mlp == "ffn":
            labels.append(f"{layer}.mlp")
            values.append(through_norm(cache[f"blocks.{layer}.mlp.out"][position]))
    if "bias" in norm:
        labels.append("ln_final.bias")
        values.append(float(np.asarray(norm["bias"], np.float64) @ u_D))
    return Attribution(answer, position, labels, np.asarray(values), float(cache["logits"][position, answer]))
