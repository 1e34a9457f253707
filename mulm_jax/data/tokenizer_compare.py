"""One text under several tokenizers, side by side: each one's tokens (id, vocabulary piece, the text it covers and
where), characters per token, the words it splits and, for BPE, the merges that built each piece."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2

from mulm_jax.data.errors import DataError
from mulm_jax.data.tokenizer import (
    HF_CONFIG_FILE,
    HF_FILE,
    SENTENCEPIECE_FILE,
    CharTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
)

CHAR = "char"  # the spec of a char tokenizer over the text's own characters
ACCEPTED = (
    "`char` (the text's own characters), a run folder, a data set version folder, a SentencePiece .model file, "
    "or a Hugging Face tokenizer.json (or its folder)"
)
SENTENCEPIECE_ALGORITHMS = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.ModelType
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
_WORD = re.compile(r"\S+")

Merge = tuple[str, str, str]  # left, right, and the piece the two make
Priority = Callable[[str, str], Optional[float]]  # a pair's priority to merge (higher first); None: never merged


@dataclass(frozen=True)
class Token:
    id: int
    piece: str  # as the vocabulary spells it: "▁the" (SentencePiece), "Ġthe" (byte-level BPE), "<0xE2>"
    text: str  # what it covers of the text, text[start:end]: "" for all but one of a character's byte pieces
    start: int  # character offsets in the text, in order and not overlapping
    end: int


@dataclass(frozen=True)
class SplitWord:
    """A whitespace-separated word that takes more than one token."""

    word: str
    start: int
    end: int
    tokens: list[int]  # positions in Tokenization.tokens


@dataclass(frozen=True)
class Tokenization:
    name: str  # the spec as given, or the served model's id
    kind: str  # Tokenizer.kind: char, sentencepiece or hf
    algorithm: str  # char, bpe, unigram, word, wordpiece, wordlevel
    vocab_size: int
    tokens: list[Token]
    chars_per_token: Optional[float]  # None for a text that takes no tokens (all whitespace, say)
    split_words: list[SplitWord]
    merges: Optional[dict[int, list[Merge]]]  # BPE: each piece's merges, in the order applied; None otherwise


def compare(specs: Sequence[str], text: str) -> list[Tokenization]:
    """`text` under each tokenizer `specs` names (see load_tokenizer)."""
    return [tokenize(load_tokenizer(spec, text), text, spec) for spec in specs]


def load_tokenizer(spec: str, text: str) -> Tokenizer:
    """`char`: a char tokenizer over the characters of `text`; anything else a path (tokenizer_at)."""
    if spec == CHAR:
        return CharTokenizer(sorted(set(text)))
    return tokenizer_at(Path(spec))


def tokenizer_at(path: Path) -> Tokenizer:
    """The tokenizer of a run or data set version folder, or in a SentencePiece model file, a char tokenizer's
    tokenizer.json or a Hugging Face tokenizer.json (with its tokenizer_config.json where one lies beside it)."""
    if path.is_dir():
        for name in (SENTENCEPIECE_FILE, HF_FILE):
            if (path / name).is_file():
                return tokenizer_at(path / name)
        raise DataError(f"{path} holds no tokenizer ({SENTENCEPIECE_FILE} or {HF_FILE}): expected {ACCEPTED}")
    if not path.is_file():
        raise DataError(f"tokenizer {str(path)!r} does not exist: expected {ACCEPTED}")
    if path.suffix == ".json":
        return _json_tokenizer(path)
    try:
        return SentencePieceTokenizer.from_file(path)
    except DataError as e:
        raise DataError(f"{e}; expected {ACCEPTED}") from None


def _json_tokenizer(path: Path) -> Tokenizer:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"tokenizer file {path} is not JSON ({e}): expected {ACCEPTED}") from None
    if isinstance(spec, dict) and spec.get("kind") == CharTokenizer.kind:
        return CharTokenizer.from_file(path)
    if isinstance(spec, dict) and "model" in spec:
        if path.name == HF_FILE and (path.parent / HF_CONFIG_FILE).is_file():
            return HFTokenizer.from_folder(path.parent)
        return HFTokenizer(path.read_text(encoding="utf-8"), {}, str(path))
    raise DataError(
        f'{path} is neither a char tokenizer\'s file (with "kind": "char") nor a Hugging Face tokenizer.json '
        f'(with a "model"): expected {ACCEPTED}'
    )


def tokenize(tokenizer: Tokenizer, text: str, name: str) -> Tokenization:
    """The tokens of `text` as the tokenizer reads it, without the special tokens a model's prompt may add."""
    try:
        if isinstance(tokenizer, SentencePieceTokenizer):
            tokens, algorithm, priority = _sentencepiece_tokens(tokenizer, text)
        elif isinstance(tokenizer, HFTokenizer):
            tokens, algorithm, priority = _hf_tokens(tokenizer, text)
        elif isinstance(tokenizer, CharTokenizer):
            tokens, algorithm, priority = _char_tokens(tokenizer, text), CHAR, None
        else:
            raise DataError(f"a {tokenizer.kind} tokenizer cannot be compared: expected {ACCEPTED}")
    except DataError as e:
        raise DataError(f"{name}: {e}") from None
    merges = None
    if priority is not None:
        built = {t.id: merge_sequence(t.piece, priority) for t in tokens}
        merges = {i: sequence for i, sequence in built.items() if sequence}
    return Tokenization(
        name=name,
        kind=tokenizer.kind,
        algorithm=algorithm,
        vocab_size=tokenizer.vocab_size,
        tokens=tokens,
        chars_per_token=len(text) / len(tokens) if tokens else None,
        split_words=split_words(text, tokens),
        merges=merges,
    )


def merge_sequence(piece: str, priority: Priority) -> Optional[list[Merge]]:
    """BPE over the characters of `piece`: merge the adjacent pair of the highest priority (the leftmost of equals)
    until none is left. The merges in order when they end in `piece`; None when they end elsewhere (a piece BPE does
    not build from its characters: a byte piece, a user-defined one)."""
    symbols, merges = list(piece), []
    while len(symbols) > 1:
        best, at = None, -1
        for i in range(len(symbols) - 1):
            p = priority(symbols[i], symbols[i + 1])
            if p is not None and (best is None or p > best):
                best, at = p, i
        if best is None:
            break
        merged = symbols[at] + symbols[at + 1]
        merges.append((symbols[at], symbols[at + 1], merged))
        symbols[at : at + 2] = [merged]
    return merges if symbols == [piece] else None


def split_words(text: str, tokens: Sequence[Token]) -> list[SplitWord]:
    """The words (runs of non-whitespace) that more than one token covers; an empty token (a byte piece) counts
    for the word it stands in."""
    words, k = [], 0
    for match in _WORD.finditer(text):
        start, end = match.span()
        while k < len(tokens) and tokens[k].end <= start and tokens[k].start < start:
            k += 1
        inside = []
        while k + len(inside) < len(tokens) and tokens[k + len(inside)].start < end:
            inside.append(k + len(inside))
        if len(inside) > 1:
            words.append(SplitWord(match.group(), start, end, inside))
    return words


def _char_tokens(tokenizer: CharTokenizer, text: str) -> list[Token]:
    ids = tokenizer.encode_array(text)  # one id per character
    return [Token(int(i), tokenizer.piece(int(i)), c, k, k + 1) for k, (i, c) in enumerate(zip(ids, text))]


def _sentencepiece_tokens(tokenizer: SentencePieceTokenizer, text: str) -> tuple[list[Token], str, Priority | None]:
    """Spans from SentencePiece's own offsets, which map its normalized pieces back onto the text as given. A BPE
    model keeps no merge list: a pair's priority is the score of the piece it makes."""
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model)
    proto = sentencepiece_model_pb2.ModelProto.FromString(tokenizer.model)
    char_at = _char_offsets(text)
    pieces = sp.encode(text, return_type="proto").pieces
    spans = [(p.id, sp.id_to_piece(p.id), char_at[p.begin], char_at[p.end]) for p in pieces]  # unk: <unk>
    algorithm = SENTENCEPIECE_ALGORITHMS.get(proto.trainer_spec.model_type, "unknown")
    if algorithm != "bpe":
        return _tokens(text, spans), algorithm, None
    scores = {p.piece: p.score for p in proto.pieces if p.type == _PIECE.NORMAL}
    return _tokens(text, spans), algorithm, lambda left, right: scores.get(left + right)


def _hf_tokens(tokenizer: HFTokenizer, text: str) -> tuple[list[Token], str, Priority | None]:
    """Spans from the `tokenizers` library's offsets, read without a post-processor (which adds special tokens
    and may trim a token's leading space off its span). A BPE model's merges are ranked, the first the highest."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.tokenizer_json)
    backend.post_processor = None
    encoding = backend.encode(text, add_special_tokens=False)
    spans = [(i, piece, start, end) for i, piece, (start, end) in zip(encoding.ids, encoding.tokens, encoding.offsets)]
    model = json.loads(tokenizer.tokenizer_json)["model"]
    algorithm = str(model.get("type", "unknown")).lower()
    if algorithm != "bpe":
        return _tokens(text, spans), algorithm, None
    # merges are "left right" strings (tokenizers < 0.20) or [left, right] pairs
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    rank = {pair: -r for r, pair in reversed(list(enumerate(pairs)))}  # a pair listed twice: its first rank
    return _tokens(text, spans), algorithm, lambda left, right: rank.get((left, right))


def _tokens(text: str, spans: list[tuple[int, str, int, int]]) -> list[Token]:
    """Tokens from (id, piece, start, end): a span that overlaps the one before it (the tokens of one character's
    bytes share its span) starts where that one ends, so the tokens' texts follow one another."""
    tokens, done = [], 0
    for i, piece, start, end in spans:
        start = max(start, done)
        done = max(end, start)
        tokens.append(Token(int(i), piece, text[start:done], start, done))
    return tokens


def _char_offsets(text: str) -> list[int]:
    """For each UTF-8 byte offset in `text` (and its end), the offset of the character it falls in."""
    at = []
    for k, c in enumerate(text):
        at += [k] * len(c.encode("utf-8", "surrogatepass"))
    return at + [len(text)]
