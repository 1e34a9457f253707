"""Hugging Face interop: tiny random GPT-2 / Llama / Mistral / Qwen2 / Phi-3 models built with transformers, imported
as runs, give transformers' logits and greedy tokens; their tokenizers give transformers' ids and chat templates
render the same text; runs export back to folders transformers loads, and round trip to identical parameters."""

from __future__ import annotations

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch  # pinned in requirements-test.txt: a missing one fails these tests rather than skipping them
import transformers
from flax import traverse_util

from support import CHAT_TEMPLATE, byte_level_tokenizer, hf_corpus, random_params
from mulm_jax.config import Config, DataConfig, config_from_dict, dump_config
from mulm_jax.data.assemble import assemble
from mulm_jax.data.loader import load_tokens
from mulm_jax.data.tokenizer import CharTokenizer, HFTokenizer, Tokenizer
from mulm_jax.infer import Engine, SamplingParams, load_model
from mulm_jax.infer.chat import ChatTemplate, JinjaChatTemplate
from mulm_jax.interop.convert import from_hf, save_params, to_hf
from mulm_jax.interop.mapping import InteropError
from mulm_jax.models import build_model

V = 320  # the models' vocabulary: the tokenizer's ~300 tokens padded, as Llama / Qwen checkpoints pad theirs
SMALL = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
CONFIGS = {  # name -> (config class, its settings)
    "gpt2": ("GPT2Config", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "llama": ("LlamaConfig", SMALL),
    "llama-tied": ("LlamaConfig", dict(SMALL, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(SMALL, sliding_window=6)),
    "qwen2": ("Qwen2Config", SMALL),
    "phi3": ("Phi3Config", dict(SMALL, pad_token_id=0)),
}
PROMPTS = [[5, 17, 200, 3, 99], [250, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 280]]  # ids the tokenizer has
TRICKY = [
    "Hello world",
    "  leading and   inner   spaces\t\ttabs\n\n\nnewlines ",
    "Ünïcödé café naïve 日本語 🎉👍🏽",
    "<extra> between<extra>tokens <extra>",
    "",
    " ",
    "a\u00a0b\u200bc",
    "trailing space ",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  Hi there!  "},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Unicode: ü 日本"},
]


def llama_style_tokenizer(folder) -> None:
    """Llama's kind: BPE over ▁-marked words with byte fallback, <s> added in front of each text."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = tokenizers.normalizers.Sequence(
        [tokenizers.normalizers.Prepend("▁"), tokenizers.normalizers.Replace(" ", "▁")]
    )
    tok.decoder = tokenizers.decoders.Sequence(
        [
            tokenizers.decoders.Replace("▁", " "),
            tokenizers.decoders.ByteFallback(),
            tokenizers.decoders.Fuse(),
            tokenizers.decoders.Strip(" ", 1, 0),
        ]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(
        hf_corpus(), tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", *bytes_])
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
    )
    fast.add_tokens(["<extra>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def hf_model(name: str, **overrides):
    torch.manual_seed(0)
    config_class, settings = CONFIGS[name]
    config = getattr(transformers, config_class)(**dict(settings, **overrides))
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None  # greedy tests run their 20 tokens whatever comes
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, ids_1xL, valid_1xL):
    return model.apply({"params": params}, ids_1xL, valid_BxT=valid_1xL)


def our_logits(lm, ids: list[int]) -> np.ndarray:
    """The full forward, padded to one length per model so that one compilation serves every prompt."""
    L = min(lm.config.model.max_seq_len, 48)
    ids_1xL = np.zeros((1, L), np.int32)
    ids_1xL[0, : len(ids)] = ids
    return np.asarray(_forward(lm.model, lm.params, ids_1xL, np.arange(L)[None] < len(ids)))[0, : len(ids)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (the transformers model, the run imported from its saved folder)."""
    root = tmp_path_factory.mktemp("interop")
    byte_level_tokenizer(root / "tok")
    out = {}
    for name in CONFIGS:
        model = hf_model(name)
        model.save_pretrained(root / name)
        byte_level_tokenizer(root / name)
        from_hf(root / name, root / f"{name}-run")
        out[name] = (model, load_model(root / f"{name}-run"))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_imported_logits_equal_transformers(folders, name):
    model, lm = folders[name]
    for ids in PROMPTS:
        np.testing.assert_allclose(our_logits(lm, ids), hf_logits(model, ids)[:, :V], atol=1e-4, rtol=0)


# Each engine compiles its prefill and decode steps (~12 s of CPU): one architecture in the fast suite.
@pytest.mark.parametrize(
    "name", ["mistral", *(pytest.param(n, marks=pytest.mark.slow) for n in ("gpt2", "llama", "phi3"))]
)
def test_engine_greedy_tokens_equal_transformers_generate_and_the_full_forward(folders, name):
    """20 greedy tokens; ids past the tokenizer's vocabulary (the padded rows) are never chosen, in either."""
    model, lm = folders[name]
    n = lm.tokenizer.vocab_size
    prompt = PROMPTS[1]
    with torch.no_grad():
        want = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=0,
            suppress_tokens=list(range(n, V)),
        )[0, len(prompt) :].tolist()
    with Engine(lm, slots=2, max_len=40) as engine:
        got = [
            r.result()
            for r in [
                engine.submit(p, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
                for p in (prompt, PROMPTS[0])
            ]
        ]
    assert list(got[0].token_ids) == want
    for p, completion in zip((prompt, PROMPTS[0]), got):  # the cached steps against one full forward
        seq = p + list(completion.token_ids)
        assert our_logits(lm, seq)[len(p) - 1 : -1, :n].argmax(-1).tolist() == list(completion.token_ids)


def test_imported_run_config_and_files(folders, tmp_path):
    _, lm = folders["qwen2"]
    cfg = lm.config.model
    assert (cfg.positional, cfg.norm, cfg.ffn, cfg.use_bias, cfg.qkv_bias, cfg.kv_heads) == (
        "rope",
        "rmsnorm",
        "swiglu",
        False,
        True,
        2,
    )
    assert folders["mistral"][1].config.model.sliding_window == 6
    assert isinstance(lm.tokenizer, HFTokenizer) and lm.tokenizer.vocab_size < V
    assert isinstance(ChatTemplate.load(lm.run_dir), JinjaChatTemplate)
    assert json.loads((lm.run_dir / "imported_from.json").read_text())["architecture"] == "Qwen2ForCausalLM"


def test_sharded_bfloat16_checkpoint_imports(tmp_path):
    model = hf_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    byte_level_tokenizer(tmp_path / "src")
    assert len(list((tmp_path / "src").glob("model-*.safetensors"))) > 1
    from_hf(tmp_path / "src", tmp_path / "run")
    lm = load_model(tmp_path / "run")
    want = hf_logits(model.float(), PROMPTS[1])[:, :V]
    np.testing.assert_allclose(our_logits(lm, PROMPTS[1]), want, atol=1e-4, rtol=0)
    from_hf(tmp_path / "src", tmp_path / "run16", dtype="bfloat16")
    assert load_model(tmp_path / "run16").config.model.dtype == "bfloat16"


ROPE = {  # name -> (architecture, config changes): each run past its original context, where the scaling acts
    "linear": ("llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
    "dynamic": (
        "llama",
        dict(
            max_position_embeddings=12, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
        ),
    ),
    "yarn": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        ),
    ),
    "llama3": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        ),
    ),
    "longrope": (
        "phi3",
        dict(
            original_max_position_embeddings=16,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "long_factor": [1.0, 1.5, 2.0, 4.0],
                "short_factor": [1.0, 1.1, 1.2, 1.3],
                "original_max_position_embeddings": 16,
            },
        ),
    ),
}


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.slow) if k in ("linear", "yarn") else k for k in ROPE]
)  # the fast suite: the scalings added for this interop
def test_rope_scalings_equal_transformers_past_the_original_context(kind, tmp_path):
    name, changes = ROPE[kind]
    model = hf_model(name, **changes)
    model.save_pretrained(tmp_path / "src")
    byte_level_tokenizer(tmp_path / "src")
    from_hf(tmp_path / "src", tmp_path / "run")
    lm = load_model(tmp_path / "run")
    assert lm.config.model.rope_scaling.type == kind
    long = list(np.random.default_rng(0).integers(0, V, 24))
    for ids in (long[:10], long):  # within, then past the original context (transformers' dynamic state grows)
        np.testing.assert_allclose(our_logits(lm, ids), hf_logits(model, ids)[:, :V], atol=1e-4, rtol=0)


@pytest.mark.parametrize("make", [byte_level_tokenizer, llama_style_tokenizer])
def test_tokenizer_ids_and_text_equal_transformers(make, tmp_path):
    make(tmp_path)
    ours, theirs = Tokenizer.load(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(ours, HFTokenizer) and ours.vocab_size == len(theirs)
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    for text in TRICKY:
        ids = theirs.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    assert [a.tolist() for a in ours.encode_documents(TRICKY)] == [theirs.encode(t) for t in TRICKY]


def test_data_set_assembled_with_a_model_folders_tokenizer_for_fine_tuning(tmp_path):
    llama_style_tokenizer(tmp_path / "model")
    text = "The quick brown fox.\n\nHello world, Ünïcödé!\n\n" * 20
    (tmp_path / "text.txt").write_text(text)
    result = assemble(
        DataConfig(
            sources=(str(tmp_path / "text.txt"),),
            tokenizer=str(tmp_path / "model"),
            out_dir=str(tmp_path / "datasets"),
            dedup="none",
            val_fraction=0.0,
        )
    )
    assert result.manifest["tokenizer"]["kind"] == "tokenizer_folder"
    assert Tokenizer.load(result.path).serialize() == Tokenizer.load(tmp_path / "model").serialize()
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")
    assert load_tokens(result.path, "train")[:6].tolist() == theirs.encode(text)[:6]


@pytest.mark.parametrize("make", [byte_level_tokenizer, llama_style_tokenizer])
def test_chat_template_renders_and_encodes_as_transformers(make, tmp_path):
    make(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    template = ChatTemplate.load(tmp_path)
    text = template.render(MESSAGES)
    assert text == theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    # The rendered text starts with the bos token: encoding it adds no second one, as apply_chat_template does.
    want = theirs.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert Tokenizer.load(tmp_path).encode(text) == list(want)
    with pytest.raises(ValueError, match="system only first"):
        template.render(MESSAGES + [{"role": "system", "content": "late"}])


def native_run(folder, **model):
    """A run folder as training leaves one: random parameters, a char tokenizer."""
    cfg = config_from_dict(
        {"model": dict(vocab_size=48, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32, **model)}
    )
    model = build_model(cfg.model)
    params = jax.device_get(random_params(model, jnp.zeros((1, 4), jnp.int32), seed=1)["params"])
    folder.mkdir()
    CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyz .,!?:;\n'-()0")), eos=True).save(folder)
    (folder / "config.yaml").write_text(dump_config(Config(model=cfg.model)))
    save_params(folder, params)
    return folder


EXPORTABLE = {
    "gpt2-shaped": dict(positional="learned", tie_embeddings=True),
    "llama-shaped": dict(
        positional="rope",
        num_kv_heads=2,
        norm="rmsnorm",
        ffn="swiglu",
        use_bias=False,
        tie_embeddings=False,
        rope_scaling={"type": "yarn", "factor": 2.0, "original_max_seq_len": 16},
    ),
}


@pytest.mark.parametrize("kind", list(EXPORTABLE))
def test_export_loads_in_transformers_with_equal_logits_and_round_trips(kind, tmp_path):
    run = native_run(tmp_path / "run", **EXPORTABLE[kind])
    to_hf(run, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    lm = load_model(run)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4]
    np.testing.assert_allclose(our_logits(lm, ids), hf_logits(model, ids), atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.encode("hello, world!\n") == lm.tokenizer.encode("hello, world!\n")
    from_hf(tmp_path / "hf", tmp_path / "back")
    back = load_model(tmp_path / "back")
    assert back.config.model == lm.config.model
    flat = lambda p: traverse_util.flatten_dict(jax.device_get(p))  # noqa: E731
    assert flat(back.params).keys() == flat(lm.params).keys()
    for key, value in flat(lm.params).items():
        np.testing.assert_array_equal(flat(back.params)[key], value, err_msg="/".join(key))


@pytest.mark.parametrize(
    "switch, shown",
    [
        ({"residual": False}, "model.residual=False (GPT-2: True)"),
        ({"attention_scale": "none"}, "model.attention_scale='none' (GPT-2: 'sqrt')"),
        ({"mlp": "none"}, "model.mlp='none' (GPT-2: 'ffn')"),
    ],
)
def test_export_refuses_an_ablated_model_naming_the_switch(tmp_path, switch, shown):
    run = native_run(tmp_path / "run", **switch)  # GPT-2 shaped but for the switch
    with pytest.raises(InteropError, match=r"settings with no counterpart: as GPT-2: " + re.escape(shown) + ";"):
        to_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_errors_name_the_architecture_or_setting(tmp_path, folders):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(InteropError, match="BertForMaskedLM"):
        from_hf(src, tmp_path / "out")
    run = native_run(tmp_path / "run", positional="alibi")
    with pytest.raises(InteropError, match="model.positional='alibi'"):
        to_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "out").exists()
    with pytest.raises(InteropError, match="exists already"):
        from_hf(src, run)
