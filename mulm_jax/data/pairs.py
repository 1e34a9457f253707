"""Pairs as data: source/target, prompt/completion and chat records, checked and cleaned, tokenized into examples
with a loss mask (the tokens a model is trained to produce), stored per split beside the tokens."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mulm_jax.data.clean import CleanOptions, normalize, rejection
from mulm_jax.data.errors import DataError
from mulm_jax.data.sources import Source
from mulm_jax.data.tokenizer import Tokenizer

# A data set's "kind": one of these, or "text"; each pair kind's record fields.
FIELDS = {"seq2seq": ("source", "target"), "completion": ("prompt", "completion"), "chat": ("messages",)}
ROLES = ("system", "user", "assistant")
_JOIN = " \x1e "  # between a pair's parts in its dedup key: cleaning removes the control character \x1e from text


@dataclass(frozen=True)
class Pair:
    """One example: its text in parts, each with whether the model is trained to produce it (seq2seq and completion:
    two parts; chat: the rendered turns), and where it came from."""

    parts: tuple[tuple[str, bool], ...]
    source: int  # index into the data set's sources
    file: int  # index into the data set's pair files (manifest "pairs"/"files")
    line: int  # of the JSONL file, or the pair's number in a generated task
    held_out: bool = False

    def key(self) -> str:
        """The text dedup compares: the whole pair."""
        return _JOIN.join(text for text, _ in self.parts)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)


def record_kind(record: Any, text_field: str) -> Optional[str]:
    """A JSONL record's kind by its fields: "text" (it has `text_field`), a pair kind, or None."""
    if not isinstance(record, dict):
        return None
    if text_field in record:
        return "text"
    return next((kind for kind, fields in FIELDS.items() if any(f in record for f in fields)), None)


def file_kind(path: Path, text_field: str) -> str:
    """What a source file holds, by its first JSONL record: "text" for other files and for records of text."""
    if not path.name.removesuffix(".gz").endswith(".jsonl"):
        return "text"
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            line = next((line for line in f if line.strip()), "")
        return record_kind(json.loads(line), text_field) or "text" if line else "text"
    except (OSError, EOFError, ValueError):
        return "text"  # the text reader names the problem


def data_kind(sources: list[Source], text_field: str) -> str:
    """What the sources hold, "text" or a pair kind (a built-in task: seq2seq); a DataError when they differ."""
    kinds = {}
    for source in sources:
        if source.task or source.generated:
            kinds[source.spec] = "seq2seq" if source.task else "text"
        for file in source.files:
            kinds[str(file.path)] = file_kind(file.path, text_field)
    if len(set(kinds.values())) > 1:
        (a, kind_a), *others = kinds.items()
        b, kind_b = next((name, kind) for name, kind in others if kind != kind_a)
        raise DataError(
            f"a data set holds one kind of data, but {a} holds {_kind_name(kind_a)} and {b} holds {_kind_name(kind_b)}"
        )
    return next(iter(kinds.values()), "text")


def _kind_name(kind: str) -> str:
    return "text" if kind == "text" else f"{kind} pairs ({_names(FIELDS[kind])})"


def template_identity(template: Any) -> str:
    """sha256 of what makes a chat template render as it does (its fields, or its Jinja source and tokens)."""
    what = getattr(template, "source", None)
    what = [what, template.special_tokens] if what is not None else dataclasses.asdict(template)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def decoder_start_id(tokenizer: Tokenizer) -> int:
    """The id an encoder-decoder's decoder starts from (as fairseq's): the end-of-text id."""
    if tokenizer.eos_id is None:
        raise DataError(
            f"the {tokenizer.kind} tokenizer has no end-of-text id: pairs need one to end each target "
            "(a char tokenizer has one when its data set joined several documents; a run trained on one "
            "document has none)"
        )
    return tokenizer.eos_id


class PairReader:
    """Checks and cleans the records of pair files: each problem a DataError naming the file, line and field."""

    def __init__(self, kind: str, options: CleanOptions, chat_template: Any = None):
        self.kind, self.options, self.chat_template = kind, options, chat_template
        self.removed: Counter = Counter()  # pairs dropped by the length limits, by reason
        self.chars: Counter = Counter()  # characters cleaning removed, by kind

    def pair(self, record: Any, where: str, **at: Any) -> Optional[Pair]:
        """The record as a Pair (None: dropped by min_doc_chars / max_doc_chars)."""
        fields = FIELDS[self.kind]
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: a {self.kind} record is a JSON object with {_names(fields)}, not a {type(record).__name__}"
            )
        for name in fields:
            if name not in record:
                raise DataError(
                    f"{where}: no {name!r} field (a {self.kind} record has {_names(fields)}; found: "
                    f"{', '.join(record) or 'none'})"
                )
        if self.kind == "chat":
            parts = self._chat(record["messages"], where)
        else:
            parts = tuple((self._text(record[name], where, name), loss) for name, loss in zip(fields, (False, True)))
        reason = rejection("".join(text for text, _ in parts), self.options)
        if reason:
            self.removed[reason] += 1
            return None
        return Pair(parts, **at)

    def _text(self, value: Any, where: str, name: str) -> str:
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} is a {type(value).__name__}, expected a string")
        text, removed = normalize(value, self.options.fold_whitespace)
        self.chars.update(removed)
        if not text.strip():
            raise DataError(f"{where}: field {name!r} is empty")
        return text

    def _chat(self, messages: Any, where: str) -> tuple[tuple[str, bool], ...]:
        if not isinstance(messages, list) or not messages:
            raise DataError(
                f"{where}: field 'messages' is {'empty' if messages == [] else 'not a list'}: expected a "
                'list of {"role", "content"} objects'
            )
        checked = []
        for i, m in enumerate(messages):
            name = f"messages[{i}]"
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f'{where}: field {name!r} is not a {{"role", "content"}} object')
            if m["role"] not in ROLES:
                raise DataError(f"{where}: field '{name}.role' is {m['role']!r}: expected one of {', '.join(ROLES)}")
            checked.append({"role": m["role"], "content": self._text(m["content"], where, f"{name}.content")})
        if not any(m["role"] == "assistant" for m in checked):
            raise DataError(f"{where}: field 'messages' has no assistant message: nothing to train on")
        return render_chat(self.chat_template, checked, where)


def render_chat(template: Any, messages: list[dict], where: str) -> tuple[tuple[str, bool], ...]:
    """A conversation through the chat template as parts: up to each assistant message, the prompt the template
    renders for it (no loss), then the message as the template renders it (loss). Messages after the last
    assistant one are left out: nothing would be learnt from them."""
    from mulm_jax.infer.loading import InferenceError

    parts: list[tuple[str, bool]] = []
    done = ""
    try:
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = template.render(messages[:k], add_generation_prompt=True)
            whole = template.render(messages[: k + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not whole.startswith(prompt):
                raise DataError(
                    f"{where}: field 'messages[{k}]': the chat template does not render it as a "
                    "continuation of the messages before it, so its tokens cannot be told apart"
                )
            parts += [(prompt[len(done) :], False), (whole[len(prompt) :], True)]
            done = whole
    except InferenceError as e:
        raise DataError(f"{where}: field 'messages': {e}") from None
    return tuple((text, loss) for text, loss in parts if text)


def encode_pair(tokenizer: Tokenizer, pair: Pair, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32 [L] and loss mask bool [L] of an example, each trained part ended by the end-of-text id.

    seq2seq: the source's ids then the target's, encoded apart (they are different sequences). completion, chat:
    the parts' text encoded as one, each token belonging to the part it starts in (a token that merges across a
    boundary belongs to the later part)."""
    eos = decoder_start_id(tokenizer)
    if kind == "seq2seq":
        (source, _), (target, _) = pair.parts
        ids = [tokenizer.encode(source), tokenizer.encode(target)]
        part_T = np.repeat([0, 1], [len(ids[0]), len(ids[1])])
        ids_T = np.asarray(ids[0] + ids[1], np.int32)
    else:
        ids_T, part_T, text = np.zeros(0, np.int32), np.zeros(0, np.int64), ""
        for i, (piece, _) in enumerate(pair.parts):
            text += piece
            new = tokenizer.encode_array(text)
            n = min(len(new), len(ids_T))
            same = int(np.argmin(np.append(new[:n] == ids_T[:n], False)))  # the common prefix's length
            ids_T, part_T = new, np.concatenate([part_T[:same], np.full(len(new) - same, i)])
    loss = np.array([pair.parts[i][1] for i in part_T], bool)
    # after the last token of each trained part, the end token, unless the part holds one (a template wrote it)
    ends = [
        t + 1
        for t in range(len(ids_T))
        if loss[t] and (t + 1 == len(ids_T) or part_T[t + 1] != part_T[t]) and eos not in ids_T[part_T == part_T[t]]
    ]
    return np.insert(ids_T, ends, eos).astype(np.int32), np.insert(loss, ends, True)


@dataclass(frozen=True)
class PairArrays:
    """A split's examples: their tokens and loss mask end to end, where each starts, and where it came from."""

    tokens: np.ndarray  # [N tokens]
    mask: np.ndarray  # bool [N tokens]
    offsets: np.ndarray  # int64 [examples + 1]
    origin: np.ndarray  # int32 [examples, 2]: (pair file, line)

    FILES = {"": ".bin", "_mask": "_mask.bin", "_offsets": "_offsets.bin", "_origin": "_origin.bin"}

    @classmethod
    def build(cls, examples: list[tuple[np.ndarray, np.ndarray]], pairs: list[Pair]) -> "PairArrays":
        lengths = [len(ids) for ids, _ in examples]
        return cls(
            tokens=np.concatenate([np.zeros(0, np.int32)] + [ids for ids, _ in examples]),
            mask=np.concatenate([np.zeros(0, bool)] + [m for _, m in examples]),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            origin=np.array([(p.file, p.line) for p in pairs], np.int32).reshape(-1, 2),
        )

    @staticmethod
    def file_names(split: str) -> dict[str, str]:
        return {f"{split}{key}": f"{split}{suffix}" for key, suffix in PairArrays.FILES.items()}

    def save(self, folder: Path, split: str, dtype: str) -> None:
        arrays = (self.tokens.astype(dtype), self.mask.astype(np.uint8), self.offsets, self.origin)
        for name, array in zip(self.file_names(split).values(), arrays):
            array.tofile(folder / name)

    @classmethod
    def load(cls, folder: Path, manifest: dict, split: str) -> "PairArrays":
        """The split's arrays, memory-mapped read-only; a DataError when a file is missing or of the wrong size."""
        files, count = manifest["files"], manifest["pairs"][f"{split}_examples"]
        layout = [
            (f"{split}", manifest["dtype"], (manifest[f"{split}_tokens"],)),
            (f"{split}_mask", "uint8", (manifest[f"{split}_tokens"],)),
            (f"{split}_offsets", "int64", (count + 1,)),
            (f"{split}_origin", "int32", (count, 2)),
        ]
        arrays = []
        for key, dtype, shape in layout:
            path = Path(folder) / files[key]
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != size:
                raise DataError(f"data set {folder} is damaged: {path.name} is missing or not {shape} {dtype}")
            arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=shape) if size else np.zeros(shape, dtype))
        tokens, mask, offsets, origin = arrays
        return cls(tokens, mask.view(bool), offsets, origin)

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[i], self.offsets[i + 1]
        return np.asarray(self.tokens[start:end]), np.asarray(self.mask[start:end])

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Per example: all its tokens, and those before its first trained one (a seq2seq example's source)."""
        total = np.diff(self.offsets)
        if not self.count:
            return total, total
        pos = np.arange(len(self.mask)) - np.repeat(self.offsets[:-1], total)
        return total, np.minimum.reduceat(np.where(self.mask, pos, np.repeat(total, total)), self.offsets[:-1])

    def single_boundary(self) -> bool:
        """Whether every example is untrained tokens, then trained ones (a source, then its target)."""
        total, first = self.lengths()
        return not self.count or bool(np.all(np.add.reduceat(self.mask, self.offsets[:-1]) == total - first))


def fit_problem(
    arrays: PairArrays,
    kind: str,
    files: list[str],
    *,
    seq_len: int,
    source_len: Optional[int],
    seq_len_name: str,
    source_len_name: str = "",
) -> Optional[str]:
    """What stops an example from being trained in rows of `seq_len` (and sources of `source_len`, for an
    encoder-decoder), naming the first such example's file (of `files`, the manifest's pair files), line and field;
    None when every one fits."""
    fields = FIELDS[kind]
    total, first = arrays.lengths()
    if source_len is not None:
        checks = [
            (
                first,
                source_len,
                f"field {fields[0]!r} has {{n}} tokens, more than the encoder's {source_len} ({source_len_name})",
            ),
            (
                total - first,
                seq_len,
                f"field {fields[-1]!r} has {{n}} tokens with its end token, more than the "
                f"decoder's {seq_len} ({seq_len_name})",
            ),
        ]
    else:
        named = " and ".join(repr(f) for f in fields)
        checks = [
            (
                total - 1,
                seq_len,
                f"field{'s' * (len(fields) > 1)} {named} make {{n}} tokens to read (all but "
                f"the last), more than {seq_len} ({seq_len_name})",
            )
        ]
    for lengths, limit, message in checks:
        too_long = np.flatnonzero(lengths > limit)
        if too_long.size:
            i = int(too_long[0])
            file, line = arrays.origin[i]
            return f"{files[file]}:{line}: {message.format(n=int(lengths[i]))}"
    return None


def _names(fields: tuple[str, ...]) -> str:
    return " and ".join(repr(f) for f in fields)
