"""Tokenizers behind one interface: nanoGPT-style characters, or SentencePiece (trained BPE / unigram, or given)."""

from __future__ import annotations

import abc
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from mulm_jax.data.errors import DataError

CHAR_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
# Fixed ids of the SentencePiece models trained here.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_MAX_LINE_CHARS = 16_384  # training lines are cut to this, so each stays under max_sentence_length bytes


class Tokenizer(abc.ABC):
    """Text <-> ids. `Tokenizer.load(folder_or_model_file)` gives a `CharTokenizer` or a `SentencePieceTokenizer`."""

    kind: str
    file_name: str  # what `save` writes into a folder
    vocab_size: int
    pad_id: int | None = None
    unk_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None

    @staticmethod
    def load(path: str | Path) -> Tokenizer:
        """From a dataset (or run) folder holding tokenizer.model or tokenizer.json, or from a SentencePiece file."""
        path = Path(path)
        if path.is_dir():
            if (path / SENTENCEPIECE_FILE).is_file():
                return SentencePieceTokenizer.from_file(path / SENTENCEPIECE_FILE)
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

    @abc.abstractmethod
    def serialize(self) -> bytes:
        """The contents of `file_name`."""

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / self.file_name
        path.write_bytes(self.serialize())
        return path

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "pad_id": self.pad_id, "unk_id": self.unk_id,
                "bos_id": self.bos_id, "eos_id": self.eos_id}


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
            raise DataError(f"tokenizer file {source} is not a valid SentencePiece model: "
                            f"it could not be parsed ({type(e).__name__})") from None
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            i if i >= 0 else None for i in (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id()))

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
                    sentence_iterator=_training_lines(train_docs), model_writer=model, logstream=quiet,
                    model_type=model_type, vocab_size=vocab_size, byte_fallback=True,
                    pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                    normalization_rule_name="identity", remove_extra_whitespaces=False,
                    max_sentence_length=4 * _MAX_LINE_CHARS, num_threads=1, minloglevel=2)
            except RuntimeError as e:
                too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", str(e))
                if too_high:
                    raise DataError(f"vocab_size={vocab_size} is too large for this corpus: SentencePiece {model_type} "
                                    f"can make at most {too_high.group(2)} pieces from the training split") from None
                raise DataError(f"training a SentencePiece {model_type} tokenizer failed: {e}") from None
        return cls(model.getvalue(), f"trained {model_type}")

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def encode_documents(self, docs: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(docs))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def serialize(self) -> bytes:
        return self.model


def _training_lines(docs: Sequence[str]) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            for start in range(0, len(line), _MAX_LINE_CHARS):
                piece = line[start:start + _MAX_LINE_CHARS]
                if piece.strip():
                    yield piece
