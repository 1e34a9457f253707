"""Named activations (`Tracer.run_with_cache`) and the interventions built on them: every cached name of a GPT-2-,
a Llama- and a 2017-style encoder-decoder model (and of their one-switch ablations) recomputed in numpy from the
names before it and the parameters, the cache's names and shapes against the vocabulary, edits and patches doing
exactly what they say, the errors for bad names, shapes, layers, heads and positions, and the speed of an
all-names cache of the demo model."""

from __future__ import annotations

import math
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from support import ALPHABET, ROOT, loaded, naive_rope, random_params
from mulm_jax.config import load_config
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.infer import LoadedModel
from mulm_jax.inspect import InspectError, Tracer
from mulm_jax.inspect.activations import Edit
from mulm_jax.inspect.interventions import (
    ablate_each_head,
    check_position,
    head_edits,
    logit_attribution,
    neuron_edits,
    patch_edit,
    patch_residual,
)
from mulm_jax.models import build_model

PROMPT = "the cat sat."  # 12 characters (bucket 16)
OTHER = "a dog ran on"  # another prompt of the same length
TARGET = "a cat"  # the encoder-decoder's decoder tokens (PROMPT is its source)

GPT2 = dict(
    num_layers=2,
    positional="learned",
    norm="layernorm",
    norm_position="pre",
    ffn="gelu",
    tie_embeddings=True,
    use_bias=True,
)
LLAMA = dict(
    num_layers=2,
    positional="rope",
    norm="rmsnorm",
    norm_position="pre",
    ffn="swiglu",
    num_kv_heads=2,
    use_bias=False,
    tie_embeddings=False,
)
# The 2017 Transformer as configs/transformer_base.yaml gives it (post-norm, sinusoidal positions, ReLU, embeddings
# scaled by sqrt(D), tied, biases), at the tiny sizes.
ENCODER_DECODER = {
    **yaml.safe_load((ROOT / "configs" / "transformer_base.yaml").read_text())["model"],
    **dict(
        vocab_size=32,
        d_model=16,
        num_heads=4,
        d_ff=32,
        max_seq_len=16,
        num_layers=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
    ),
}
MODELS = {"gpt2": GPT2, "llama": LLAMA, "encoder_decoder": ENCODER_DECODER}
# The one-switch ablations (docs/models.md), each on the model it changes most.
ABLATED = {
    "gpt2 no residual": {**GPT2, "residual": False},
    "llama unscaled attention": {**LLAMA, "attention_scale": "none"},
    "gpt2 no mlp": {**GPT2, "mlp": "none"},
    "encoder_decoder no residual": {**ENCODER_DECODER, "residual": False},
    "encoder_decoder no mlp": {**ENCODER_DECODER, "mlp": "none"},
}


@pytest.fixture(scope="module")
def tracers() -> dict[str, Tracer]:
    """One Tracer per model, shared by the module's tests, so that each program compiles once."""
    return {name: Tracer(loaded(**overrides)) for name, overrides in MODELS.items()}


@pytest.fixture(scope="module")
def caches(tracers) -> dict:
    """Every name of each model for PROMPT (the encoder-decoder's source; its decoder reads TARGET)."""
    return {
        name: tracer.run_with_cache(PROMPT, target=TARGET if tracer.encoder_decoder else None)
        for name, tracer in tracers.items()
    }


# --- numpy references, written from the formulas ------------------------------------------------------------------


def _np_params(tracer: Tracer):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tracer.loaded.params)


def _norm(x_TxD, p, cfg):
    """(1 / std or 1 / rms [T, 1], the normed output [T, D]) of LayerNorm or RMSNorm."""
    if cfg.norm == "layernorm":
        centred = x_TxD - x_TxD.mean(-1, keepdims=True)
        var = (centred**2).mean(-1, keepdims=True)
    else:
        centred, var = x_TxD, (x_TxD**2).mean(-1, keepdims=True)
    factor = 1.0 / np.sqrt(var + cfg.norm_eps)
    return factor, centred * factor * p["scale"] + p.get("bias", 0.0)


def _dense(x, p):
    """x [..., D] times a kernel [D, ...] (Dense or DenseGeneral), plus its bias when it has one."""
    return np.tensordot(x, p["kernel"], axes=([-1], [0])) + p.get("bias", 0.0)


def _sinusoids(T, D):
    """PE[pos, 2i] = sin(pos / 10000^(2i/D)), PE[pos, 2i+1] = cos(pos / 10000^(2i/D))."""
    angle_TxF = np.arange(T)[:, None] / 10000.0 ** (np.arange(0, D, 2) / D)[None, :]
    pe = np.zeros((T, D))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angle_TxF), np.cos(angle_TxF)
    return pe


def _gelu(x):
    """GPT-2's tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Recompute:
    """Recomputes each cached name from the cached names before it and the parameters, and checks it."""

    def __init__(self, tracer: Tracer, cache):
        self.cfg, self.cache, self.params = tracer.cfg, cache, _np_params(tracer)
        self.checked: set[str] = set()

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self.cache[name], np.float64)

    def check(self, name: str, expected) -> np.ndarray:
        np.testing.assert_allclose(self.cache[name], expected, atol=1e-5, rtol=1e-5, err_msg=name)
        self.checked.add(name)
        return self[name]

    def embeddings(self, stack: str, ids) -> np.ndarray:
        cfg, embedder = self.cfg, self.params["embedder"]
        scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        x = self.check(f"{stack}embed", embedder["token"]["embedding"][ids] * scale)
        if cfg.positional == "learned":
            x = x + self.check(f"{stack}pos_embed", embedder["position"]["embedding"][: len(ids)])
        elif cfg.positional == "sinusoidal":
            x = x + self.check(f"{stack}pos_embed", _sinusoids(len(ids), cfg.d_model))
        return x

    def attention(self, name: str, p, x_TxD, source_SxD, causal: bool, rope: bool) -> np.ndarray:
        cfg = self.cfg
        H, K, Dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        q = self.check(f"{name}.q", _dense(x_TxD, p["query"]))
        k = self.check(f"{name}.k", _dense(source_SxD, p["key"]))
        v = self.check(f"{name}.v", _dense(source_SxD, p["value"]))
        if rope:
            q = self.check(f"{name}.rot_q", naive_rope(q, cfg.rope_theta))
            k = self.check(f"{name}.rot_k", naive_rope(k, cfg.rope_theta))
        # Each kv head serves H / K consecutive query heads.
        scale = 1.0 / math.sqrt(Dh) if cfg.attention_scale == "sqrt" else 1.0
        scores = self.check(f"{name}.scores", np.einsum("thd,shd->hts", q, np.repeat(k, H // K, axis=1)) * scale)
        T, S = scores.shape[1:]
        allowed = np.tril(np.ones((T, S), bool)) if causal else np.ones((T, S), bool)
        pattern = self.check(f"{name}.pattern", _softmax(np.where(allowed[None], scores, -np.inf)))
        z = self.check(f"{name}.z", np.einsum("hts,shd->thd", pattern, np.repeat(v, H // K, axis=1)))
        head_out = self.check(f"{name}.head_out", np.einsum("thk,hkd->thd", z, p["out"]["kernel"]))
        return self.check(f"{name}.out", head_out.sum(axis=1) + p["out"].get("bias", 0.0))

    def mlp(self, name: str, p, x_TxD) -> np.ndarray:
        if self.cfg.ffn == "swiglu":
            gate = self.check(f"{name}.pre", _dense(x_TxD, p["gate"]))
            up = self.check(f"{name}.pre_linear", _dense(x_TxD, p["up"]))
            post = self.check(f"{name}.post", gate / (1.0 + np.exp(-gate)) * up)
        else:
            pre = self.check(f"{name}.pre", _dense(x_TxD, p["up"]))
            post = self.check(f"{name}.post", {"gelu": _gelu, "relu": lambda a: np.maximum(a, 0.0)}[self.cfg.ffn](pre))
        return self.check(f"{name}.out", _dense(post, p["down"]))

    def stack(self, stack: str, stack_params, x_TxD, num_layers: int, causal: bool, memory_SxD=None) -> np.ndarray:
        """The layers of one stack from its embeddings: its output (the final norm's, or the last resid_post)."""
        cfg = self.cfg
        for layer in range(num_layers):
            block, p = f"{stack}blocks.{layer}", stack_params[f"layer_{layer}"]
            x = self.check(f"{block}.resid_pre", x_TxD)
            sublayers = [
                (
                    "ln1",
                    "attn",
                    "self_attention",
                    lambda h: self.attention(
                        f"{block}.attn", p["self_attention"], h, h, causal, cfg.positional == "rope"
                    ),
                    "resid_mid",
                )
            ]
            if memory_SxD is not None:
                sublayers.append(
                    (
                        "ln_cross",
                        "cross_attn",
                        "cross_attention",
                        lambda h: self.attention(
                            f"{block}.cross_attn", p["cross_attention"], h, memory_SxD, False, False
                        ),
                        "resid_mid_cross",
                    )
                )
            if cfg.mlp == "ffn":
                sublayers.append(("ln2", "mlp", "ffn", lambda h: self.mlp(f"{block}.mlp", p["ffn"], h), "resid_post"))
            for ln, part, module, f, resid in sublayers:
                norm_params = p[f"{module}_norm"]
                skip = x if cfg.residual else 0.0  # model.residual=false: f(norm(x)), norm(f(x))
                if cfg.norm_position == "pre":  # x + f(norm(x))
                    factor, out = _norm(x, norm_params, cfg)
                    self.check(f"{block}.{ln}.scale_factor", factor)
                    expected = skip + f(self.check(f"{block}.{ln}.out", out))
                else:  # norm(x + f(x))
                    factor, out = _norm(skip + f(x), norm_params, cfg)
                    self.check(f"{block}.{ln}.scale_factor", factor)
                    expected = self.check(f"{block}.{ln}.out", out)
                x = self.check(f"{block}.{resid}", expected)
            x_TxD = self.check(f"{block}.resid_post", x)  # model.mlp=none: the attention's output stream
        if cfg.norm_position == "pre":
            factor, out = _norm(x_TxD, stack_params["final_norm"], cfg)
            self.check(f"{stack}ln_final.scale_factor", factor)
            x_TxD = self.check(f"{stack}ln_final.out", out)
        return x_TxD

    def model(self, ids_T, source_ids_S=None) -> None:
        cfg, params = self.cfg, self.params
        memory = None
        if source_ids_S is not None:
            memory = self.stack(
                "encoder.",
                params["encoder"],
                self.embeddings("encoder.", source_ids_S),
                cfg.encoder_layers,
                causal=False,
            )
        hidden = self.stack(
            "", params["decoder"], self.embeddings("", ids_T), cfg.decoder_layers, causal=True, memory_SxD=memory
        )
        embedder = params["embedder"]
        head = embedder["token"]["embedding"].T if cfg.tie_embeddings else embedder["head"]["kernel"]
        self.check("logits", hidden @ head)


# --- 1. every cached name recomputed ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_every_cached_name_equals_its_numpy_recomputation_from_the_names_before_it(tracers, caches, model):
    tracer, cache = tracers[model], caches[model]
    ref = Recompute(tracer, cache)
    ref.model(cache.ids_T, cache.source_ids_S)
    assert ref.checked == set(cache)  # every name was recomputed, none skipped


@pytest.fixture(scope="module")
def ablated() -> dict[str, Tracer]:
    return {name: Tracer(loaded(**overrides)) for name, overrides in ABLATED.items()}


@pytest.mark.parametrize("model", list(ABLATED))
def test_every_cached_name_of_an_ablated_model_equals_its_recomputation_and_the_names_are_its_vocabulary(
    ablated, model
):
    tracer = ablated[model]
    cache = tracer.run_with_cache(PROMPT, target=TARGET if tracer.encoder_decoder else None)
    ref = Recompute(tracer, cache)
    ref.model(cache.ids_T, cache.source_ids_S)
    assert ref.checked == set(cache) and list(cache) == list(tracer.names)
    assert any(".mlp." in name or ".ln2." in name for name in cache) == (tracer.cfg.mlp == "ffn")


# --- 2. names and shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_all_names_are_the_vocabulary_and_each_array_has_the_shape_its_letters_say(tracers, caches, model):
    tracer, cache = tracers[model], caches[model]
    cfg = tracer.cfg
    assert list(cache) == list(tracer.names) and cache.letters == tracer.names
    T, S = (len(TARGET), len(PROMPT)) if tracer.encoder_decoder else (len(PROMPT), 0)
    sizes = {
        "T": T,
        "S": S,
        "D": cfg.d_model,
        "H": cfg.num_heads,
        "K": cfg.kv_heads,
        "Dh": cfg.head_dim,
        "F": cfg.ff_dim,
        "V": cfg.vocab_size,
        "1": 1,
    }
    for name, letters in cache.letters.items():
        assert cache[name].dtype == np.float32, name
        chex.assert_shape(cache[name], tuple(sizes[a] for a in letters.split("x")))
    if tracer.encoder_decoder:
        np.testing.assert_array_equal(cache.ids_T, tracer.tokenizer.encode(TARGET))
        np.testing.assert_array_equal(cache.source_ids_S, tracer.tokenizer.encode(PROMPT))
        assert any(n.startswith("encoder.") for n in cache) and "blocks.0.cross_attn.pattern" in cache
    else:
        np.testing.assert_array_equal(cache.ids_T, tracer.tokenizer.encode(PROMPT))
        assert cache.source_ids_S is None
    if cfg.positional == "rope":
        assert "blocks.0.attn.rot_q" in cache and "pos_embed" not in cache
    if cfg.norm_position == "post":
        assert not any("ln_final" in n for n in cache)


def test_asking_for_a_glob_returns_exactly_the_names_it_matches(tracers, caches):
    tracer = tracers["encoder_decoder"]  # the glob must not reach the encoder's or the cross-attention's patterns
    some = tracer.run_with_cache(PROMPT, ["blocks.*.attn.pattern", "logits"], target=TARGET)
    assert list(some) == ["blocks.0.attn.pattern", "blocks.1.attn.pattern", "logits"]
    assert some.letters == {"blocks.0.attn.pattern": "HxTxT", "blocks.1.attn.pattern": "HxTxT", "logits": "TxV"}
    for name in some:
        np.testing.assert_allclose(some[name], caches["encoder_decoder"][name], atol=1e-6)
    with pytest.raises(KeyError, match="was not cached"):
        some["blocks.0.attn.z"]


# --- 3. caching changes nothing; edits and patches ---------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_cached_logits_equal_the_model_applied_without_hooks(tracers, caches, model):
    tracer, cache = tracers[model], caches[model]
    apply = jax.jit(tracer.loaded.model.apply)  # compiled: a fraction of the time of running it op by op
    variables = {"params": tracer.loaded.params}
    if tracer.encoder_decoder:
        logits = apply(variables, jnp.asarray(cache.source_ids_S[None]), jnp.asarray(cache.ids_T[None]))
    else:
        logits = apply(variables, jnp.asarray(cache.ids_T[None]))
    np.testing.assert_allclose(cache["logits"], np.asarray(logits)[0], atol=1e-6)


ABLATION_NAMES = ["blocks.0.attn.z", "blocks.0.attn.head_out", "logits"]  # one compiled program for these edits


def test_a_zero_scale_on_one_heads_z_zeroes_exactly_that_heads_output_and_changes_the_logits(tracers, caches):
    tracer, clean = tracers["gpt2"], caches["gpt2"]
    H, head = tracer.cfg.num_heads, 2
    scale_1xHx1 = np.ones((1, H, 1), np.float32)
    scale_1xHx1[0, head, 0] = 0.0
    cache = tracer.run_with_cache(PROMPT, ABLATION_NAMES, edits={"blocks.0.attn.z": Edit(scale=scale_1xHx1)})
    assert (cache["blocks.0.attn.z"][:, head] == 0.0).all()
    assert (cache["blocks.0.attn.head_out"][:, head] == 0.0).all()
    others = [h for h in range(H) if h != head]
    np.testing.assert_allclose(
        cache["blocks.0.attn.head_out"][:, others], clean["blocks.0.attn.head_out"][:, others], atol=1e-6
    )
    assert np.abs(cache["logits"] - clean["logits"]).max() > 1e-3


@pytest.mark.parametrize("positions", [None, range(len(PROMPT))], ids=["all", "each_named"])
def test_patching_layer_0s_residual_from_another_prompt_at_every_position_gives_its_logits(tracers, caches, positions):
    tracer = tracers["gpt2"]
    other = tracer.run_with_cache(OTHER)  # the all-names program again: same bucket
    assert np.abs(other["logits"] - caches["gpt2"]["logits"]).max() > 1e-2
    patched = tracer.run_with_cache(
        PROMPT,
        ["logits"],
        edits={  # every position: all of them, or each named
            "blocks.0.resid_pre": patch_edit(other, "blocks.0.resid_pre", positions)
        },
    )
    np.testing.assert_allclose(patched["logits"], other["logits"], atol=1e-5)


# --- 4. bad input -------------------------------------------------------------------------------------------------


def test_an_unknown_name_is_an_error_listing_the_valid_names(tracers):
    tracer = tracers["gpt2"]
    for call in (
        lambda: tracer.run_with_cache(PROMPT, ["blocks.2.attn.z"]),
        lambda: tracer.run_with_cache(PROMPT, ["logits"], edits={"blocks.0.attn.zz": Edit(scale=0.0)}),
    ):
        with pytest.raises(InspectError, match="unknown activation name") as error:
            call()
        assert all(name in str(error.value) for name in tracer.names)


@pytest.mark.parametrize(
    "name, edit, message",
    [
        (
            "blocks.0.attn.z",
            Edit(scale=np.ones((1, 5, 1))),
            "edit of 'blocks.0.attn.z' (TxHxDh): axis 1 has size 5, expected 1 or 4 (H)",
        ),
        (
            "blocks.0.resid_pre",
            Edit(shift=np.zeros((13, 16))),
            "edit of 'blocks.0.resid_pre' (TxD): axis 0 has size 13, expected 1 or 12 (T)",
        ),
        (
            "blocks.0.mlp.post",
            Edit(scale=np.ones((1, 12, 1, 32))),
            "edit of 'blocks.0.mlp.post': an array of shape (1, 12, 1, 32) has more axes than TxF",
        ),
    ],
)
def test_an_edit_of_the_wrong_shape_names_the_activation_and_the_axis(tracers, name, edit, message):
    with pytest.raises(InspectError) as error:
        tracers["gpt2"].run_with_cache(PROMPT, ["logits"], edits={name: edit})
    assert message in str(error.value)


def test_layers_heads_positions_and_prompt_lengths_out_of_range_name_the_range(tracers):
    tracer = tracers["gpt2"]
    with pytest.raises(InspectError, match=r"layer 2 is out of range: this model has layers 0 to 1"):
        head_edits(tracer, [(0, 1), (2, 0)])
    with pytest.raises(InspectError, match=r"layer -1 is out of range: this model has layers 0 to 1"):
        head_edits(tracer, [(-1, 0)])
    with pytest.raises(InspectError, match=r"head 4 is out of range: this model has heads 0 to 3"):
        head_edits(tracer, [(1, 4)])
    with pytest.raises(InspectError, match=r"the clean prompt has 12 tokens and the corrupt one 11: .*same number"):
        patch_residual(tracer, PROMPT, PROMPT[:-1])
    for position in (12, -13):
        with pytest.raises(
            InspectError,
            match=rf"position {position} is out of range: the prompt has positions 0 to "
            r"11 \(or -12 to -1 from the end\)",
        ):
            check_position(position, 12)
    assert check_position(-1, 12) == 11 and check_position(0, 12) == 0
    with pytest.raises(InspectError, match="needs a pre-norm model"):
        logit_attribution(tracers["encoder_decoder"], PROMPT, target=TARGET)
    with pytest.raises(InspectError, match="decoder-only"):
        patch_residual(tracers["encoder_decoder"], PROMPT, PROMPT)


# --- 5. interventions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_logit_attribution_components_sum_to_the_models_logit(tracers, caches, model):
    tracer, cache = tracers[model], caches[model]
    attribution = logit_attribution(tracer, PROMPT)
    answer = int(np.argmax(cache["logits"][-1]))
    assert attribution.token == answer and attribution.position == len(PROMPT) - 1
    np.testing.assert_allclose(attribution.logit, cache["logits"][-1, answer], atol=1e-5)
    np.testing.assert_allclose(attribution.total, attribution.logit, atol=1e-4)
    cfg = tracer.cfg
    assert (
        len(attribution.labels)
        == len(attribution.values)
        == (1 + (cfg.positional == "learned") + cfg.num_layers * (cfg.num_heads + cfg.use_bias + 1) + cfg.use_bias)
    )
    # a single head's share is its output at the position through the final norm, written out here
    factor = cache["ln_final.scale_factor"][-1, 0]
    head_out = np.asarray(cache["blocks.1.attn.head_out"][-1, 3], np.float64)
    if cfg.norm == "layernorm":
        head_out = head_out - head_out.mean()
    params = _np_params(tracer)
    u = (
        params["embedder"]["token"]["embedding"][answer]
        if cfg.tie_embeddings
        else params["embedder"]["head"]["kernel"][:, answer]
    )
    np.testing.assert_allclose(
        attribution.values[attribution.labels.index("1.attn.3")],
        head_out * factor * params["decoder"]["final_norm"]["scale"] @ u,
        atol=1e-5,
    )


def test_an_mlp_less_models_attribution_lists_no_mlp_and_sums_to_its_logit_and_it_has_no_neurons(ablated):
    tracer = ablated["gpt2 no mlp"]
    attribution = logit_attribution(tracer, PROMPT)
    assert not any("mlp" in label for label in attribution.labels)
    cfg = tracer.cfg  # embed, pos_embed, each layer's heads and bias, the final norm's bias
    assert len(attribution.labels) == 2 + cfg.num_layers * (cfg.num_heads + 1) + 1
    np.testing.assert_allclose(attribution.total, attribution.logit, atol=1e-4)
    with pytest.raises(InspectError, match=r"no MLPs \(model.mlp=none"):
        neuron_edits(tracer, [(0, 1)])
    with pytest.raises(InspectError, match="needs residual connections"):
        logit_attribution(ablated["gpt2 no residual"], PROMPT)


def test_each_heads_ablation_equals_a_cached_run_with_that_head_alone_ablated(tracers, caches):
    tracer, clean = tracers["gpt2"], caches["gpt2"]
    table = ablate_each_head(tracer, PROMPT)
    clean_logprobs = np.asarray(jax.nn.log_softmax(clean["logits"][-1]))
    assert table.token == int(np.argmax(clean_logprobs)) and table.position == len(PROMPT) - 1
    np.testing.assert_allclose(table.logprob, clean_logprobs[table.token], atol=1e-5)
    L, H = tracer.cfg.num_layers, tracer.cfg.num_heads
    chex.assert_shape(table.delta_LxH, (L, H))
    expected = np.zeros((L, H))
    for layer in range(L):
        names = ABLATION_NAMES if layer == 0 else ["logits"]
        for head in range(H):
            ablated = tracer.run_with_cache(PROMPT, names, edits=head_edits(tracer, [(layer, head)]))
            expected[layer, head] = np.asarray(jax.nn.log_softmax(ablated["logits"][-1]))[table.token] - table.logprob
    np.testing.assert_allclose(table.delta_LxH, expected, atol=1e-5)
    assert np.abs(table.delta_LxH).max() > 1e-3  # the heads matter, so the comparison means something


def test_ablated_neurons_read_zero_or_their_mean_over_the_prompt_and_the_others_are_untouched(tracers, caches):
    tracer, clean = tracers["llama"], caches["llama"]
    name = "blocks.1.mlp.post"
    zeroed = tracer.run_with_cache(PROMPT, [name], edits=neuron_edits(tracer, [(1, 3), (1, 7)]))[name]
    np.testing.assert_array_equal(zeroed[:, [3, 7]], 0.0)
    untouched = [n for n in range(tracer.cfg.ff_dim) if n not in (3, 7)]
    np.testing.assert_allclose(zeroed[:, untouched], clean[name][:, untouched], atol=1e-6)
    meaned = tracer.run_with_cache(PROMPT, [name], edits=neuron_edits(tracer, [(1, 3)], "mean", clean))[name]
    np.testing.assert_allclose(meaned[:, 3], clean[name][:, 3].mean(), atol=1e-6)
    with pytest.raises(InspectError, match="neurons 0 to 31"):
        neuron_edits(tracer, [(0, 32)])
    with pytest.raises(InspectError, match="needs the clean run's cache"):
        neuron_edits(tracer, [(0, 1)], "mean")


def test_patching_layer_0_where_the_prompts_differ_restores_the_clean_run_exactly(tracers):
    tracer = tracers["gpt2"]
    clean, corrupt = "the cat sat.", "the bat sat."  # one differing position: 4
    differ = [t for t, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
    clean_cache = tracer.run_with_cache(clean)
    restored = tracer.run_with_cache(
        corrupt, ["logits"], edits={"blocks.0.resid_pre": patch_edit(clean_cache, "blocks.0.resid_pre", differ)}
    )
    np.testing.assert_allclose(restored["logits"], clean_cache["logits"], atol=1e-5)

    table = patch_residual(tracer, clean, corrupt)
    T, L = len(clean), tracer.cfg.num_layers
    chex.assert_shape(table.patched_LxT, (L, T))
    assert table.token == int(np.argmax(clean_cache["logits"][-1]))
    clean_logprobs = np.asarray(jax.nn.log_softmax(clean_cache["logits"][-1]))
    np.testing.assert_allclose(table.clean_logprob, clean_logprobs[table.token], atol=1e-5)
    assert abs(table.clean_logprob - table.corrupt_logprob) > 1e-2  # the corruption matters
    restored_LxT = table.restored_LxT
    np.testing.assert_allclose(restored_LxT[0, differ], 1.0, atol=1e-4)  # layer 0 there: the clean run itself
    same = [t for t in range(T) if t not in differ]
    np.testing.assert_allclose(restored_LxT[0, same], 0.0, atol=1e-4)  # same token, same residual: no change
    np.testing.assert_allclose(restored_LxT[:, : differ[0]], 0.0, atol=1e-4)  # before it, every layer agrees


# --- 6. speed -----------------------------------------------------------------------------------------------------


def test_caching_every_name_of_the_demo_model_for_64_tokens_takes_under_100_ms():
    cfg = load_config(ROOT / "configs" / "shakespeare_char.yaml")
    model = build_model(cfg.model)
    inputs, _ = model.window_inputs(jnp.zeros((1, 4), jnp.int32))
    params = random_params(model, *inputs)["params"]
    chars = sorted(set(ALPHABET) | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ&$-';?3"))
    assert len(chars) == cfg.model.vocab_size
    tracer = Tracer(
        LoadedModel(model=model, params=params, tokenizer=CharTokenizer(chars), config=cfg, step=0, run_dir=None)
    )
    prompt = ("ROMEO:\nBut soft, what light through yonder window breaks? It is " * 2)[:64]
    cache = tracer.run_with_cache(prompt)  # compiles
    assert len(cache) == len(tracer.names) and cache["logits"].shape == (64, cfg.model.vocab_size)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        tracer.run_with_cache(prompt)
        times.append(time.perf_counter() - start)
    assert tracer.traces == 1
    assert np.median(times) < 0.1, f"run_with_cache took {sorted(times)} s"


def test_cached_logits_of_a_length_dependent_rope_model_equal_the_unpadded_model():
    lm = loaded(
        num_layers=1,
        positional="rope",
        rope_scaling={
            "type": "longrope",
            "factor": 4.0,
            "original_max_seq_len": 8,
            "long_factor": [2.0, 3.0],
            "short_factor": [1.0, 1.0],
        },
    )
    ids = list(range(1, 7))  # 6 tokens: short factors; its bucket of 16 would take the long ones
    cache = Tracer(lm).run_with_cache(ids, ["logits"])
    expected = jax.jit(lm.model.apply)({"params": lm.params}, jnp.asarray([ids]))[0]
    np.testing.assert_allclose(cache["logits"], np.asarray(expected), atol=1e-5)
