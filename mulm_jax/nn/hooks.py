"""Named activations: the hook points the modules pass their intermediate values through, one fixed vocabulary of
names (TransformerLens-style: `blocks.3.attn.pattern`), for caching (sown into the `activations` collection) and for
interventions (a function that replaces the value). Outside a `hooks(...)` block a hook point does nothing."""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax

ACTIVATIONS = "activations"  # the variable collection cached activations are sown into

# Module names in the model's tree -> their part of an activation's name.
_STACKS = {"decoder": "", "encoder": "encoder."}
_PARTS = {
    "self_attention": "attn",
    "cross_attention": "cross_attn",
    "ffn": "mlp",
    "self_attention_norm": "ln1",
    "cross_attention_norm": "ln_cross",
    "ffn_norm": "ln2",
    "final_norm": "ln_final",
}


@dataclass(frozen=True)
class HookSet:
    """What the hook points of one forward pass do: sow the names `keep` accepts, replace those in `edits`."""

    keep: Callable[[str], bool] = lambda name: False
    edits: Mapping[str, Callable[[jax.Array], jax.Array]] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.keep(name) or name in self.edits


_ACTIVE: contextvars.ContextVar[Optional[HookSet]] = contextvars.ContextVar("mulm_hooks", default=None)


@contextlib.contextmanager
def hooks(
    keep: Iterable[str] | Callable[[str], bool] = (),
    edits: Optional[Mapping[str, Callable[[jax.Array], jax.Array]]] = None,
) -> Iterator[HookSet]:
    """Within this block (while a model is traced or applied), hook points sow the activations named in `keep` (a
    collection of names, or a predicate) into the `activations` collection (apply with mutable=["activations"]) and
    replace each activation named in `edits` by its function of the value."""
    keep_fn = keep if callable(keep) else frozenset(keep).__contains__
    token = _ACTIVE.set(HookSet(keep_fn, dict(edits or {})))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def prefix(module: nn.Module) -> str:
    """The name prefix of a module's activations, from its place in the model: ('decoder', 'layer_3',
    'self_attention') -> 'blocks.3.attn.'; ('encoder', 'final_norm') -> 'encoder.ln_final.'."""
    out = ""
    for part in module.scope.path if module.scope is not None else ():
        if part in _STACKS:
            out = _STACKS[part]
        elif part.startswith("layer_"):
            out += f"blocks.{part[len('layer_') :]}."
        elif part in _PARTS:
            out += _PARTS[part] + "."
    return out


def any_active() -> bool:
    """Whether a `hooks(...)` block is open (while a model is traced for inspection)."""
    return _ACTIVE.get() is not None


def active(module: nn.Module, name: str) -> bool:
    """Whether the activation `name` of `module` is cached or edited in this pass (for values computed only then,
    like each head's share of the attention output)."""
    hook_set = _ACTIVE.get()
    return hook_set is not None and hook_set.wants(prefix(module) + name)


def hook(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """The hook point `name` of `module` (its full name: the module's prefix + name): the value, edited when an
    edit names it, and sown when it is kept."""
    hook_set = _ACTIVE.get()
    if hook_set is None:
        return x
    full = prefix(module) + name
    if full in hook_set.edits:
        x = hook_set.edits[full](x)
    if hook_set.keep(full):
        module.sow(ACTIVATIONS, full, x)
    return x


def sown(collection: Mapping) -> dict[str, jax.Array]:
    """The activations a pass sowed, by name (each hook point is reached once per pass)."""
    out: dict[str, jax.Array] = {}

    def walk(tree: Mapping) -> None:
        for key, value in tree.items():
            if isinstance(value, tuple):
                out[key] = value[0]
            else:
                walk(value)

    walk(collection)
    return out


def matching(patterns: Sequence[str], vocabulary: Iterable[str]) -> list[str]:
    """The names of `vocabulary` that the patterns name (exact names or shell-style globs: `blocks.*.attn.z`), in
    the vocabulary's order. A pattern that matches nothing is an error listing the valid names."""
    names = list(vocabulary)
    chosen = set()
    for pattern in patterns:
        found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise ValueError(
                f"unknown activation name {pattern!r}: expected one of {', '.join(names)} (or a "
                "glob such as 'blocks.*.attn.pattern')"
            )
        chosen.update(found)
    return [n for n in names if n in chosen]


def vocabulary(cfg) -> dict[str, str]:
    """Every activation name a model of this config (a ModelConfig) has, in forward order, with its shape letters
    for one sequence: T the decoder's (or a decoder-only model's) tokens, S the encoder's source tokens, D the
    width, H query heads, K key/value heads, Dh the head width, F the feed-forward width, V the vocabulary."""
    names: dict[str, str] = {}
    stacks = (
        [("encoder.", "S", cfg.encoder_layers, False), ("", "T", cfg.decoder_layers, True)]
        if cfg.architecture == "encoder_decoder"
        else [("", "T", cfg.num_layers, False)]
    )
    for stack, T, layers, cross in stacks:
        names[f"{stack}embed"] = f"{T}xD"
        if cfg.positional in ("learned", "sinusoidal"):
            names[f"{stack}pos_embed"] = f"{T}xD"

        def norm(name: str) -> None:
            names[f"{name}.scale_factor"], names[f"{name}.out"] = f"{T}x1", f"{T}xD"

        def attention(name: str, S: str, rope: bool) -> None:
            names.update({f"{name}.q": f"{T}xHxDh", f"{name}.k": f"{S}xKxDh", f"{name}.v": f"{S}xKxDh"})
            if rope:
                names.update({f"{name}.rot_q": f"{T}xHxDh", f"{name}.rot_k": f"{S}xKxDh"})
            names.update(
                {
                    f"{name}.scores": f"Hx{T}x{S}",
                    f"{name}.pattern": f"Hx{T}x{S}",
                    f"{name}.z": f"{T}xHxDh",
                    f"{name}.head_out": f"{T}xHxD",
                    f"{name}.out": f"{T}xD",
                }
            )

        def mlp(name: str) -> None:
            names[f"{name}.pre"] = f"{T}xF"
            if cfg.ffn == "swiglu":
                names[f"{name}.pre_linear"] = f"{T}xF"
            names.update({f"{name}.post": f"{T}xF", f"{name}.out": f"{T}xD"})

        for layer in range(layers):
            block = f"{stack}blocks.{layer}"
            names[f"{block}.resid_pre"] = f"{T}xD"
            sublayers = [("ln1", "attn", lambda name: attention(name, T, cfg.positional == "rope"), "resid_mid")]
            if cross:
                sublayers.append(
                    ("ln_cross", "cross_attn", lambda name: attention(name, "S", False), "resid_mid_cross")
                )
            if cfg.mlp == "ffn":
                sublayers.append(("ln2", "mlp", mlp, "resid_post"))
            for norm_name, part, add, resid in sublayers:  # pre-norm: x + f(norm(x)); post-norm: norm(x + f(x))
                if cfg.norm_position == "pre":
                    norm(f"{block}.{norm_name}")
                add(f"{block}.{part}")
                if cfg.norm_position == "post":
                    norm(f"{block}.{norm_name}")
                names[f"{block}.{resid}"] = f"{T}xD"
            names[f"{block}.resid_post"] = f"{T}xD"  # the block's output, with or without an MLP before it
        if cfg.norm_position == "pre":
            norm(f"{stack}ln_final")
    names["logits"] = "TxV"
    return names
