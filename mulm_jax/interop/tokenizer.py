"""Tokenizers between a Hugging Face folder and a run folder: tokenizer.json and tokenizer_config.json (holding the
chat template); a run's char tokenizer is exported as an equivalent `tokenizers` one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import tokenizers

from mulm_jax.data.tokenizer import HF_CONFIG_FILE, HF_FILE, CharTokenizer, HFTokenizer, Tokenizer
from mulm_jax.infer.chat import JINJA_FILE
from mulm_jax.interop.mapping import InteropError

EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<unk>"  # the names a char tokenizer's ids without text get in transformers


def read_hf_tokenizer(src: Path) -> HFTokenizer:
    """The tokenizer of a transformers folder, its chat template (from chat_template.jinja, where transformers 5
    saves it) kept in tokenizer_config.json, so that the run's tokenizer files carry it to every run made from it."""
    missing = [name for name in (HF_FILE, HF_CONFIG_FILE) if not (src / name).is_file()]
    if missing:
        raise InteropError(
            f"{src} has no {' or '.join(missing)}: a model is imported with its tokenizer in the "
            "`tokenizers` format (a folder written by transformers' save_pretrained)"
        )
    tokenizer = HFTokenizer.from_folder(src)
    if "chat_template" not in tokenizer.config and (src / JINJA_FILE).is_file():
        tokenizer.config["chat_template"] = (src / JINJA_FILE).read_text(encoding="utf-8")
    return tokenizer


def export_tokenizer(tokenizer: Tokenizer, out: Path) -> Optional[str]:
    """Write the run's tokenizer for transformers into `out`; a note when it cannot be (SentencePiece)."""
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(out)
    elif isinstance(tokenizer, CharTokenizer):
        char_as_hf(tokenizer).save(out)
    else:
        return (
            f"the run's {tokenizer.kind} tokenizer was not exported (only Hugging Face and char tokenizers are); "
            "the model's ids are those of its tokenizer.model"
        )
    return None


def char_as_hf(tok: CharTokenizer) -> HFTokenizer:
    """A `tokenizers` tokenizer with the char tokenizer's ids: one token per character, the eos and unk ids as
    special tokens."""
    vocab = {c: i for i, c in enumerate(tok.chars)}
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for token, i, key in ((EOS_TOKEN, tok.eos_id, "eos_token"), (UNK_TOKEN, tok.unk_id, "unk_token")):
        if i is not None:
            vocab[token] = i
            config[key] = token
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = tokenizers.decoders.Fuse()
    backend.add_special_tokens([t for t in (EOS_TOKEN, UNK_TOKEN) if t in vocab])
    return HFTokenizer(backend.to_str(), config, "a char tokenizer")
