"""Tokenizers behind one interface: nanoGPT-style characters, SentencePiece (trained or given), Hugging Face."""

from __future__ import annotations

import abc
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2


from mulm_jax.data.errors import DataError

CHAR_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"  # a Hugging Face tokenizer: the `tokenizers` library's file, ...
HF_CONFIG_FILE = "tokenizer_config.json"  # ... and transformers' settings beside it (special tokens, chat template)
# Fixed ids of the SentencePiece models trained here.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_MAX_LINE_CHARS = 16_384  # training lines are cut to this, so each stays under max_sentence_length bytes
_MARK = "\u2581"  # SentencePiece's word-start mark: a space in the text


@dataclass(frozen=True)
class TokenLengths:
    """The UTF-8 bytes and characters each id adds to the text of an id sequence, for bits per byte and per
    character. A character counts at its first byte, so the byte pieces <0xNN> of one character add one character
    between them; special ids (pad, bos, eos) add nothing; an id of no fixed length (unk) is -1."""

    bytes_V: np.ndarray  # int64 [V]
    chars_V: np.ndarray  # int64 [V]
    mark_V: np.ndarray  # bool [V]: opens with the word-start mark that the first piece of every document carries
    # without a space in the text (SentencePiece's dummy prefix); all False where there is none
    eos_id: int | None

    def count(self, ids: np.ndarray, previous: np.ndarray) -> tuple[int, int] | None:
        """(bytes, characters) of the text of `ids` (any shape), each id preceded by the one at its place in
        `previous` (-1 where the text starts): after eos or -1 a document starts. None if an id has no length."""
        ids, previous = np.asarray(ids), np.asarray(previous)
        bytes_, chars = self.bytes_V[ids], self.chars_V[ids]
        if (bytes_ < 0).any():
            return None
        starts = int((self.mark_V[ids] & ((previous < 0) | (previous == self.eos_id))).sum())
        return int(bytes_.sum()) - starts, int(chars.sum()) - starts


class Tokenizer(abc.ABC):
    """Text <-> ids. `Tokenizer.load(folder_or_model_file)` gives a `CharTokenizer`, a `SentencePieceTokenizer` or
    an `HFTokenizer`."""

    kind: str
    file_name: str  # what `save` writes into a folder
    vocab_size: int
    pad_id: int | None = None
    unk_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None

    @staticmethod
    def load(path: str | Path) -> Tokenizer:
        """From a dataset (or run) folder holding tokenizer.model or tokenizer.json (a Hugging Face one when
        tokenizer_config.json lies beside it), or from a SentencePiece file."""
        path = Path(path)
        if path.is_dir():
            if (path / SENTENCEPIECE_FILE).is_file():
                return SentencePieceTokenizer.from_file(path / SENTENCEPIECE_FILE)
            if (path / HF_FILE).is_file() and (path / HF_CONFIG_FILE).is_file():
                return HFTokenizer.from_folder(path)
            if (path / CHAR_FILE).is_file():
                return CharTokenizer.from_file(path / CHAR_FILE)
            raise DataError(f"{path} holds no tokenizer ({SENTENCEPIECE_FILE} or {CHAR_FILE})")
        if path.is_file():
            return (CharTokenizer if path.suffix == ".json" else SentencePieceTokenizer).from_file(path)
        raise DataError(f"tokenizer {str(path)!r} does not exist")

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    @abc.abstractmethod
    def encode_array(self, text: str) -> np.ndarray:
        """The ids of `text`, int32 [N]."""

    def encode_documents(self, docs: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(d) for d in docs]

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special ids (pad, bos, eos) decode to nothing."""

    def piece(self, id: int) -> str:
        """The text of one token on its own, as a viewer shows it (a word start with its space)."""
        return self.decode([id])

    def token_lengths(self) -> TokenLengths | None:
        """Each id's bytes and characters in the text; None where ids have no such table (Hugging Face)."""
        return None

    @abc.abstractmethod
    def serialize(self) -> bytes:
        """The contents of `file_name`."""

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / self.file_name
        path.write_bytes(self.serialize())
        return path

    def describe(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }


class CharTokenizer(Tokenizer):
    """nanoGPT's scheme: id i is the i-th distinct character in code point order; an eos id (documents joined)
    and an unk id (characters not seen in training) follow only where the data set needs them."""

    kind = "char"
    file_name = CHAR_FILE

    def __init__(self, chars: Sequence[str], eos: bool = False, unk: bool = False):
        self.chars = list(chars)
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        if np.any(np.diff(self._codes.astype(np.int64)) <= 0):
            raise DataError("a char tokenizer needs distinct characters in code point order")
        n = len(self.chars)
        self.eos_id = n if eos else None
        self.unk_id = n + eos if unk else None
        self.vocab_size = n + eos + unk

    @classmethod
    def train(cls, train_docs: Sequence[str], val_docs: Sequence[str] = ()) -> CharTokenizer:
        """The characters of the training split; eos if either split joins documents, unk if val has unseen ones."""
        chars = sorted(set().union(*map(set, train_docs)))
        seen = set(chars)
        unk = any(not set(d) <= seen for d in val_docs)
        return cls(chars, eos=len(train_docs) > 1 or len(val_docs) > 1, unk=unk)

    @classmethod
    def from_file(cls, path: Path) -> CharTokenizer:
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            if spec.get("kind") != cls.kind:
                raise ValueError(f"kind is {spec.get('kind')!r}, expected 'char'")
            n = len(spec["chars"])
            return cls(spec["chars"], eos=spec["eos_id"] == n, unk=spec["unk_id"] is not None)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"tokenizer file {path} is not a valid char tokenizer: {e}") from None

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        known = self._codes[np.minimum(ids, len(self._codes) - 1)] == codes
        if not known.all():
            if self.unk_id is None:
                bad = chr(codes[np.argmin(known)])
                raise DataError(f"character {bad!r} is not in the char vocabulary of {len(self.chars)} characters")
            ids[~known] = self.unk_id
        return ids.astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else "\ufffd" if i == self.unk_id else "" for i in ids)

    def token_lengths(self) -> TokenLengths:
        """One character each, of its UTF-8 length; eos none; unk (any unseen character) no fixed length."""
        n, V = len(self.chars), self.vocab_size
        bytes_V, chars_V = np.zeros(V, np.int64), np.zeros(V, np.int64)
        bytes_V[:n] = [len(c.encode("utf-8", "surrogatepass")) for c in self.chars]
        chars_V[:n] = 1
        if self.unk_id is not None:
            bytes_V[self.unk_id] = chars_V[self.unk_id] = -1
        return TokenLengths(bytes_V, chars_V, np.zeros(V, bool), self.eos_id)

    def serialize(self) -> bytes:
        spec = {"kind": self.kind, "chars": self.chars, "eos_id": self.eos_id, "unk_id": self.unk_id}
        return (json.dumps(spec, ensure_ascii=False, indent=1) + "\n").encode()


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"
    file_name = SENTENCEPIECE_FILE

    def __init__(self, model: bytes, source: str):
        self.model = model
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model)
        except (RuntimeError, OSError) as e:
            raise DataError(
                f"tokenizer file {source} is not a valid SentencePiece model: "
                f"it could not be parsed ({type(e).__name__})"
            ) from None
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            i if i >= 0 else None for i in (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        )

    @classmethod
    def from_file(cls, path: Path) -> SentencePieceTokenizer:
        return cls(path.read_bytes(), str(path))

    @classmethod
    def train(cls, train_docs: Sequence[str], model_type: str, vocab_size: int) -> SentencePieceTokenizer:
        """BPE or unigram on the training documents: byte fallback, no normalization (text is already NFC),
        whitespace kept as is, fixed pad / unk / bos / eos ids."""
        model = io.BytesIO()
        with open(os.devnull, "w") as quiet:
            try:
                spm.SentencePieceTrainer.train(
                    sentence_iterator=_training_lines(train_docs),
                    model_writer=model,
                    logstream=quiet,
                    model_type=model_type,
                    vocab_size=vocab_size,
                    byte_fallback=True,
                    pad_id=PAD_ID,
                    unk_id=UNK_ID,
                    bos_id=BOS_ID,
                    eos_id=EOS_ID,
                    normalization_rule_name="identity",
                    remove_extra_whitespaces=False,
                    max_sentence_length=4 * _MAX_LINE_CHARS,
                    num_threads=1,
                    minloglevel=2,
                )
            except RuntimeError as e:
                too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", str(e))
                if too_high:
                    raise DataError(
                        f"vocab_size={vocab_size} is too large for this corpus: SentencePiece {model_type} "
                        f"can make at most {too_high.group(2)} pieces from the training split"
                    ) from None
                raise DataError(f"training a SentencePiece {model_type} tokenizer failed: {e}") from None
        return cls(model.getvalue(), f"trained {model_type}")

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def encode_documents(self, docs: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(docs))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def piece(self, id: int) -> str:
        """SentencePiece's word-start mark as a space; byte pieces as <0xNN>; pad / bos / eos as their names."""
        return self._sp.id_to_piece(int(id)).replace(_MARK, " ")

    def token_lengths(self) -> TokenLengths | None:
        """A piece's text with the word-start mark as one space; a byte piece one byte; unk no fixed length. The
        text is the one SentencePiece decodes, after its normalization (none in the models trained here). None for
        a model that marks word ends instead of starts (treat_whitespace_as_suffix)."""
        proto = sentencepiece_model_pb2.ModelProto.FromString(self.model)
        if proto.trainer_spec.treat_whitespace_as_suffix:
            return None
        V, sp = self.vocab_size, self._sp
        bytes_V, chars_V, mark_V = np.zeros(V, np.int64), np.zeros(V, np.int64), np.zeros(V, bool)
        for i in range(V):
            piece = sp.id_to_piece(i)
            if sp.is_unknown(i):
                bytes_V[i] = chars_V[i] = -1
            elif sp.is_byte(i):  # <0xNN>: a character starts at any byte but a continuation byte 10xxxxxx
                bytes_V[i], chars_V[i] = 1, int(int(piece[3:5], 16) & 0xC0 != 0x80)
            elif not (sp.is_control(i) or sp.is_unused(i)):
                text = piece.replace(_MARK, " ")
                bytes_V[i], chars_V[i] = len(text.encode("utf-8")), len(text)
                mark_V[i] = piece.startswith(_MARK) and proto.normalizer_spec.add_dummy_prefix
        return TokenLengths(bytes_V, chars_V, mark_V, self.eos_id)

    def serialize(self) -> bytes:
        return self.model


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer: tokenizer.json run by the `tokenizers` library, with the special tokens (and
    add_bos_token / add_eos_token) of tokenizer_config.json, so that ids equal transformers' for the same text.

    One difference: a text that already starts with the beginning-of-text token (a rendered chat template) gets
    no second one, as transformers' apply_chat_template encodes it without special tokens.
    """

    kind = "hf"
    file_name = HF_FILE

    def __init__(self, tokenizer_json: str, config: dict, source: str):
        try:
            self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the library raises plain Exceptions for malformed files
            raise DataError(f"tokenizer file {source} is not a valid Hugging Face tokenizer.json: {e}") from None
        self.tokenizer_json, self.config = tokenizer_json, config
        tokens = {name: special_token_text(config.get(f"{name}_token")) for name in ("pad", "unk", "bos", "eos")}
        self._tok.add_special_tokens([t for t in tokens.values() if t and self._tok.token_to_id(t) is None])
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            None if t is None else self._tok.token_to_id(t) for t in tokens.values()
        )
        self.bos_token = tokens["bos"]
        add_bos, add_eos = config.get("add_bos_token"), config.get("add_eos_token")
        if add_bos is not None or add_eos is not None or self._tok.post_processor is None:
            self._tok.post_processor = _template_processing(
                bool(add_bos) and tokens["bos"], self.bos_id, bool(add_eos) and tokens["eos"], self.eos_id
            )
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: Path) -> HFTokenizer:
        try:
            config = json.loads((folder / HF_CONFIG_FILE).read_text(encoding="utf-8"))
        except ValueError as e:
            raise DataError(f"{folder / HF_CONFIG_FILE} is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise DataError(f"{folder / HF_CONFIG_FILE} is not a JSON object")
        return cls((folder / HF_FILE).read_text(encoding="utf-8"), config, str(folder / HF_FILE))

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._encode([text])[0], dtype=np.int32)

    def encode_documents(self, docs: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self._encode(list(docs))]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        starts = self.bos_token is not None and any(t.startswith(self.bos_token) for t in texts)
        if not starts:
            return [e.ids for e in self._tok.encode_batch(texts)]
        return [self._tok.encode(t, add_special_tokens=not t.startswith(self.bos_token)).ids for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def serialize(self) -> bytes:
        return self.tokenizer_json.encode()

    def save(self, folder: str | Path) -> Path:
        """tokenizer.json and tokenizer_config.json, each written to a temporary name and then renamed."""
        folder = Path(folder)
        for name, text in (
            (HF_CONFIG_FILE, json.dumps(self.config, indent=2, ensure_ascii=False) + "\n"),
            (HF_FILE, self.tokenizer_json),
        ):
            tmp = folder / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(folder / name)
        return folder / HF_FILE


def special_token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _template_processing(
    bos: str | None, bos_id: int | None, eos: str | None, eos_id: int | None
) -> tokenizers.processors.TemplateProcessing:
    """bos / eos around each text, as transformers rebuilds the post-processor from add_bos_token / add_eos_token."""
    single = f"{bos + ':0 ' if bos else ''}$A:0{' ' + eos + ':0' if eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if bos else ''} $B:1{' ' + eos + ':1' if eos else ''}"
    special = [(bos, bos_id)] * bool(bos) + [(eos, eos_id)] * bool(eos)
    return tokenizers.processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _training_lines(docs: Sequence[str]) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            for start in range(0, len(line), _MAX_LINE_CHARS):
                piece = line[start : start + _MAX_LINE_CHARS]
                if piece.strip():
                    yield piece
