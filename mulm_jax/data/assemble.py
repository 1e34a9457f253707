"""Assembling a versioned data set: sources -> clean -> dedup -> split -> tokenizer -> token arrays + manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mulm_jax.config import DataConfig
from mulm_jax.config_schema import out_of_bounds
from mulm_jax.data.clean import CleanOptions, clean_documents, split_documents
from mulm_jax.data.dedup import dedup
from mulm_jax.data.errors import DataError
from mulm_jax.data.pairs import (
    FIELDS,
    Pair,
    PairArrays,
    PairReader,
    data_kind,
    decoder_start_id,
    encode_pair,
    fit_problem,
    template_identity,
)
from mulm_jax.data.sources import DEFAULT_SHARE, GENERATORS, Source, read_records, read_texts, resolve_source
from mulm_jax.data.tasks import TASKS
from mulm_jax.data.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer

FORMAT = 1  # bump when the pipeline changes what it writes for the same inputs and settings
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
TRAINED_TOKENIZERS = ("char", "bpe", "unigram")
# Settings that name inputs rather than shape the data; the version uses the inputs' contents instead.
_NOT_SETTINGS = ("dataset", "sources", "tokenizer", "out_dir")


@dataclass(frozen=True)
class Assembled:
    path: Path  # the version folder
    manifest: dict
    reused: bool  # True: the version existed and nothing was computed


@dataclass(frozen=True)
class _Doc:
    text: str
    source: int  # index into the sources
    held_out: bool


def assemble(cfg: DataConfig) -> Assembled:
    """Build `cfg.out_dir/<version>/` from `cfg.sources`, or reuse it when that version exists already."""
    sources, given, kind, template, version = _inputs(cfg)
    final = Path(cfg.out_dir) / version
    if (final / MANIFEST).is_file():
        return Assembled(final, read_manifest(final), reused=True)
    _check_writable(Path(cfg.out_dir))
    if kind != "text":
        return _assemble_pairs(cfg, version, final, sources, given, kind, template)

    docs, stats = _read_documents(sources, cfg)
    keep, removed = dedup([d.text for d in docs], cfg.dedup, cfg.near_dup_threshold)
    stats["removed"].update(removed)
    kept = [d for d, k in zip(docs, keep) if k]
    splits = _split(kept + _generated_documents(sources, kept), sources, cfg.val_fraction)
    if not splits["train"]:
        raise DataError(
            f"no documents left for training after cleaning and dedup: read {stats['read']} from "
            f"{', '.join(cfg.sources)}, removed {dict(stats['removed'])}"
        )
    texts = {split: [d.text for d in splits[split]] for split in SPLITS}
    tokenizer = given or _train_tokenizer(cfg, texts["train"], texts["val"])
    for generated in dict.fromkeys(s.generated for s in sources if s.generated):
        GENERATORS[generated].check_covers(tokenizer)
    tokens = {split: _pack(tokenizer, texts[split], split) for split in SPLITS}
    if cfg.seq_len is not None:
        _check_fits(tokens, cfg.seq_len)

    manifest = _manifest(cfg, version, sources, splits, stats, tokenizer, tokens)

    def write(folder: Path) -> None:
        for split in SPLITS:
            tokens[split].astype(manifest["dtype"]).tofile(folder / manifest["files"][split])
        _write_tokenizer_and_manifest(folder, tokenizer, manifest)

    reused = _write_atomically(final, write)
    return Assembled(final, read_manifest(final), reused)


def _assemble_pairs(
    cfg: DataConfig,
    version: str,
    final: Path,
    sources: list[Source],
    given: Tokenizer | None,
    kind: str,
    template: object,
) -> Assembled:
    """assemble() for sources of pairs: read and check -> clean -> dedup whole pairs -> split -> tokenizer ->
    examples (tokens, loss mask, offsets, origins) + manifest."""
    pairs, stats, files = _read_pairs(sources, cfg, kind, template)
    keep, removed = dedup([p.key() for p in pairs], cfg.dedup, cfg.near_dup_threshold)
    stats["removed"].update(removed)
    splits = _split_pairs([p for p, k in zip(pairs, keep) if k], sources, cfg.val_fraction)
    if not splits["train"]:
        raise DataError(
            f"no pairs left for training after cleaning and dedup: read {stats['read']} from "
            f"{', '.join(cfg.sources)}, removed {dict(stats['removed'])}"
        )
    texts = {split: [text for p in splits[split] for text, _ in p.parts] for split in SPLITS}
    tokenizer = given or _train_tokenizer(cfg, texts["train"], texts["val"])
    arrays = {
        split: PairArrays.build([_encoded(tokenizer, p, kind, files) for p in splits[split]], splits[split])
        for split in SPLITS
    }
    manifest = _manifest(cfg, version, sources, splits, stats, tokenizer, {s: a.tokens for s, a in arrays.items()})
    manifest["files"] = {
        **PairArrays.file_names("train"),
        **PairArrays.file_names("val"),
        "tokenizer": tokenizer.file_name,
    }
    manifest.update(
        kind=kind,
        pairs={
            "fields": list(FIELDS[kind]),
            "files": files,
            "decoder_start_id": decoder_start_id(tokenizer),
            **{f"{split}_examples": arrays[split].count for split in SPLITS},
            **{f"{split}_loss_tokens": int(arrays[split].mask.sum()) for split in SPLITS},
            "longest": {split: _longest(arrays[split]) for split in SPLITS},
        },
    )
    if template is not None:
        manifest["chat_template"] = template_identity(template)
    if cfg.seq_len is not None:  # assembled for an encoder-decoder (seq2seq) or a decoder (the others)
        for split in SPLITS:
            problem = fit_problem(
                arrays[split],
                kind,
                files,
                seq_len=cfg.seq_len,
                seq_len_name="data.seq_len",
                source_len=cfg.seq_len if kind == "seq2seq" else None,
                source_len_name="data.seq_len",
            )
            if problem:
                raise DataError(problem)

    def write(folder: Path) -> None:
        for split in SPLITS:
            arrays[split].save(folder, split, manifest["dtype"])
        _write_tokenizer_and_manifest(folder, tokenizer, manifest)

    reused = _write_atomically(final, write)
    return Assembled(final, read_manifest(final), reused)


def _encoded(tokenizer: Tokenizer, pair: Pair, kind: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        return encode_pair(tokenizer, pair, kind)
    except DataError as e:
        raise DataError(f"{files[pair.file]}:{pair.line}: {e}") from None


def _write_tokenizer_and_manifest(folder: Path, tokenizer: Tokenizer, manifest: dict) -> None:
    tokenizer.save(folder)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _chat_template(cfg: DataConfig) -> object:
    """The template chat pairs are rendered through: the tokenizer folder's (a run's or an imported model's, as
    serving it would use), else the plain default."""
    from mulm_jax.infer.chat import ChatTemplate  # the inference package, loaded only for chat data

    folder = Path(cfg.tokenizer)
    return ChatTemplate.load(folder if folder.is_dir() else None)


def _read_pairs(
    sources: list[Source], cfg: DataConfig, kind: str, template: object
) -> tuple[list[Pair], dict, list[str]]:
    """Every source's pairs, checked and cleaned; the reading stats; the names of the files they came from."""
    reader = PairReader(kind, CleanOptions(cfg.fold_whitespace, cfg.min_doc_chars, cfg.max_doc_chars), template)
    stats = {"read": 0, "invalid_utf8_replaced": 0, "removed": reader.removed, "chars": reader.chars}
    pairs: list[Pair] = []
    files: list[str] = []
    for i, source in enumerate(sources):
        if source.task:
            train, held_out = TASKS[source.task].pairs(0)
            records = [(n, {"source": s, "target": t}) for n, (s, t) in enumerate(train + held_out, 1)]
            read = [(f"{source.task} (generated)", records, len(train))]
        else:
            read = []
            for file in source.files:
                records, replaced = read_records(file.path, cfg.invalid_utf8)
                stats["invalid_utf8_replaced"] += replaced
                read.append((file.path.name, records, 0 if file.held_out else len(records)))
        for name, records, trained in read:
            files.append(name)
            for j, (line, record) in enumerate(records):
                pair = reader.pair(
                    record, f"{name}:{line}", source=i, file=len(files) - 1, line=line, held_out=j >= trained
                )
                if pair is not None:
                    pairs.append(pair)
            stats["read"] += len(records)
    return pairs, stats, files


def _split_pairs(pairs: list[Pair], sources: list[Source], val_fraction: float) -> dict[str, list[Pair]]:
    """Per source: its held-out pairs (a task's, a held-out file's) are val; else a val_fraction share of them,
    chosen by content hash."""
    splits: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for i in range(len(sources)):
        mine = [p for p in pairs if p.source == i]
        if any(p.held_out for p in mine):
            chosen = {j for j, p in enumerate(mine) if p.held_out}
        else:
            chosen = _hash_sample([p.key() for p in mine], val_fraction)
        splits["train"] += [p for j, p in enumerate(mine) if j not in chosen]
        splits["val"] += [p for j, p in enumerate(mine) if j in chosen]
    return splits


def _longest(arrays: PairArrays) -> dict[str, int]:
    """The longest example of a split in tokens, and its longest untrained start (a source, a prompt)."""
    total, untrained = arrays.lengths()
    return {
        "example": int(total.max(initial=0)),
        "untrained": int(untrained.max(initial=0)),
        "trained": int((total - untrained).max(initial=0)),
    }


def _manifest(
    cfg: DataConfig,
    version: str,
    sources: list[Source],
    splits: dict[str, list[_Doc]],
    stats: dict,
    tokenizer: Tokenizer,
    tokens: dict[str, np.ndarray],
) -> dict:
    """What the version holds and how it was made; only counts and checksums, so equal inputs give equal files."""
    manifest = {
        "format": FORMAT,
        "version": version,
        "kind": "text",
        "sources": [
            dict(s.describe(), documents={split: sum(d.source == i for d in splits[split]) for split in SPLITS})
            for i, s in enumerate(sources)
        ],
        "settings": _settings(cfg),
        "tokenizer": dict(
            tokenizer.describe(),
            kind=_tokenizer_kind(cfg),
            source=cfg.tokenizer,
            sha256=hashlib.sha256(tokenizer.serialize()).hexdigest(),
        ),
        "vocab_size": tokenizer.vocab_size,
        "dtype": "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32",
        "documents": {
            "read": stats["read"],
            "train": len(splits["train"]),
            "val": len(splits["val"]),
            "removed": _counts(stats["removed"]),
        },
        "characters": {"invalid_utf8_replaced": stats["invalid_utf8_replaced"], **_counts(stats["chars"])},
        "files": {"train": "train.bin", "val": "val.bin", "tokenizer": tokenizer.file_name},
    }
    for split in SPLITS:
        manifest[f"{split}_tokens"] = int(tokens[split].size)
        manifest[f"{split}_chars"] = sum(len(d.text) for d in splits[split])
        # the UTF-8 bytes of the text the tokens encode: the documents' own (the eos ids between them have none)
        manifest[f"{split}_bytes"] = sum(len(d.text.encode("utf-8", "surrogatepass")) for d in splits[split])
    return manifest


def prepare_dataset(cfg: DataConfig) -> Path:
    """The version folder to train on: `cfg.dataset` when set (checked), else assembled (or reused) from sources."""
    if cfg.dataset:
        folder = Path(cfg.dataset)
        manifest = read_manifest(folder)
        for name in manifest["files"].values():
            if not (folder / name).is_file():
                raise DataError(f"data set {folder} is incomplete: {name} is missing")
        return folder
    if not cfg.sources:
        raise DataError("no data: set data.dataset (an assembled version folder) or data.sources (to assemble one)")
    return assemble(cfg).path


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder} is not a data set version folder: it has no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read: {e}") from None


def list_versions(out_dir: str | Path) -> list[dict]:
    """The manifests of the versions in `out_dir`, by version id."""
    out = Path(out_dir)
    if not out.is_dir():
        raise DataError(f"data set folder {str(out)!r} does not exist")
    return [
        read_manifest(p)
        for p in sorted(out.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    ]


def find_version(cfg: DataConfig) -> Path | None:
    """The version folder training would read (`cfg.dataset`, or the one `assemble(cfg)` would reuse) when it
    exists, found without downloading or assembling anything; None when it does not, or an input is not at hand."""
    if cfg.dataset:
        return Path(cfg.dataset) if (Path(cfg.dataset) / MANIFEST).is_file() else None
    try:
        folder = Path(cfg.out_dir) / _inputs(cfg, download=False)[-1]
    except DataError:
        return None
    return folder if (folder / MANIFEST).is_file() else None


def _inputs(cfg: DataConfig, download: bool = True) -> tuple[list[Source], Tokenizer | None, str, object, str]:
    """What `assemble(cfg)` reads (checked settings): the sources, the tokenizer given (None: trained), the kind of
    data, the chat template (chat pairs, else None); and the version they make."""
    check_settings(cfg)
    sources = [resolve_source(spec, cfg.split_documents, download) for spec in cfg.sources]
    given = _given_tokenizer(cfg)
    kind = data_kind(sources, cfg.text_field)
    template = _chat_template(cfg) if kind == "chat" else None
    return sources, given, kind, template, version_id(cfg, sources, given, template)


def version_id(cfg: DataConfig, sources: list[Source], given: Tokenizer | None, template: object = None) -> str:
    """A hash of the inputs' contents, the settings, the tokenizer and (chat pairs) the chat template: stable
    across runs, paths and machines."""
    identity = {
        "format": FORMAT,
        "settings": _settings(cfg),
        "sources": [s.identity() for s in sources],
        "tokenizer": hashlib.sha256(given.serialize()).hexdigest() if given else None,
    }
    if template is not None:
        identity["chat_template"] = template_identity(template)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _settings(cfg: DataConfig) -> dict:
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_SETTINGS}
    return dict(settings, tokenizer=_tokenizer_kind(cfg))


def _tokenizer_kind(cfg: DataConfig) -> str:
    if cfg.tokenizer in TRAINED_TOKENIZERS:
        return cfg.tokenizer
    return "tokenizer_folder" if Path(cfg.tokenizer).is_dir() else "sentencepiece_model"


def check_settings(cfg: DataConfig) -> None:
    """Refuse settings that cannot work together (DataError naming them), before any source is read."""
    if not cfg.sources:
        raise DataError("no sources: give at least one --source (a named source, file, folder or glob)")
    if problem := out_of_bounds(cfg):  # the ranges DataConfig declares
        raise DataError(problem)
    if cfg.max_doc_chars is not None and cfg.max_doc_chars < cfg.min_doc_chars:
        raise DataError(f"max_doc_chars={cfg.max_doc_chars} is below min_doc_chars={cfg.min_doc_chars}")
    trained_sp = cfg.tokenizer in ("bpe", "unigram")
    if trained_sp and cfg.vocab_size is None:
        raise DataError(f"tokenizer {cfg.tokenizer!r} needs vocab_size (--vocab-size)")
    if not trained_sp and cfg.vocab_size is not None:
        raise DataError(
            f"vocab_size={cfg.vocab_size} applies only to the bpe and unigram tokenizers, "
            f"not to {cfg.tokenizer!r}, whose vocabulary is fixed by its data or model"
        )


def _given_tokenizer(cfg: DataConfig) -> Tokenizer | None:
    if cfg.tokenizer in TRAINED_TOKENIZERS:
        return None
    path = Path(cfg.tokenizer)
    if path.is_file():
        return SentencePieceTokenizer.from_file(path)
    if path.is_dir():  # a run's or a Hugging Face model's folder: its tokenizer, to fine-tune that model
        return Tokenizer.load(path)
    if path.suffix or os.sep in cfg.tokenizer:
        raise DataError(f"tokenizer file {cfg.tokenizer!r} does not exist")
    raise DataError(
        f"unknown tokenizer {cfg.tokenizer!r}: expected {', '.join(TRAINED_TOKENIZERS)} "
        "or the path of a SentencePiece .model file or of a folder holding a tokenizer (a run)"
    )


def _train_tokenizer(cfg: DataConfig, train: list[str], val: list[str]) -> Tokenizer:
    if cfg.tokenizer == "char":
        return CharTokenizer.train(train, val)
    return SentencePieceTokenizer.train(train, cfg.tokenizer, cfg.vocab_size)


def _read_documents(sources: list[Source], cfg: DataConfig) -> tuple[list[_Doc], dict]:
    options = CleanOptions(cfg.fold_whitespace, cfg.min_doc_chars, cfg.max_doc_chars)
    docs: list[_Doc] = []
    stats = {"read": 0, "invalid_utf8_replaced": 0, "removed": Counter(), "chars": Counter()}
    for i, source in enumerate(sources):
        for file in source.files:
            texts, replaced = read_texts(file.path, cfg.text_field, cfg.invalid_utf8)
            pieces = [p for t in texts for p in split_documents(t, source.split_documents)]
            kept, dropped, chars = clean_documents(pieces, options)
            docs += [_Doc(text, i, file.held_out) for text in kept]
            stats["read"] += len(pieces)
            stats["invalid_utf8_replaced"] += replaced
            stats["removed"].update(dropped)
            stats["chars"].update(chars)
    return docs, stats


def _generated_documents(sources: list[Source], docs: list[_Doc]) -> list[_Doc]:
    """The generated sources' documents (clean by construction, so neither cleaned nor deduplicated): each
    source the share `share` of the characters of the other sources' documents and its own together."""
    others = sum(len(d.text) for d in docs)
    generated = []
    for i, source in enumerate(sources):
        if not source.generated:
            continue
        generator = GENERATORS[source.generated]
        if others == 0 and source.share is not None:
            raise DataError(
                f"source {source.spec!r}: a share of the other sources' text, but they hold none; "
                f"give {source.generated!r} alone for {generator.ALONE_CHARS:,} characters"
            )
        share = DEFAULT_SHARE if source.share is None else source.share
        chars = round(others * share / (1 - share)) if others else generator.ALONE_CHARS
        generated += [_Doc(text, i, False) for text in generator.documents(chars, seed=i)]
    return generated


def _split(docs: list[_Doc], sources: list[Source], val_fraction: float) -> dict[str, list[_Doc]]:
    """Per source: its held-out files are val; else a single document is cut contiguously (nanoGPT's split);
    else the documents whose content hash sorts first, a val_fraction share of them, are val."""
    splits: dict[str, list[_Doc]] = {split: [] for split in SPLITS}
    for i, source in enumerate(sources):
        mine = [d for d in docs if d.source == i]
        if any(f.held_out for f in source.files):
            val = [d for d in mine if d.held_out]
            train = [d for d in mine if not d.held_out]
        elif len(mine) == 1:
            text = mine[0].text
            cut = int(len(text) * (1 - val_fraction))
            train = [_Doc(text[:cut], i, False)] if cut else []
            val = [_Doc(text[cut:], i, True)] if cut < len(text) else []
        else:
            chosen = _hash_sample([d.text for d in mine], val_fraction)
            val = [d for j, d in enumerate(mine) if j in chosen]
            train = [d for j, d in enumerate(mine) if j not in chosen]
        splits["train"] += train
        splits["val"] += val
    return splits


def _hash_sample(texts: list[str], fraction: float) -> set[int]:
    """The indices of round(fraction * n) texts (at least one when fraction > 0, never all), chosen by content
    hash so that the choice does not depend on their order."""
    if fraction == 0 or len(texts) < 2:
        return set()
    k = min(len(texts) - 1, max(1, round(fraction * len(texts))))
    digests = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts]
    return set(sorted(range(len(texts)), key=lambda j: (digests[j], j))[:k])


def _pack(tokenizer: Tokenizer, texts: list[str], split: str) -> np.ndarray:
    """The split's documents encoded and joined with the eos id."""
    if len(texts) < 2:
        return np.concatenate([np.zeros(0, np.int32), *tokenizer.encode_documents(texts)])
    if tokenizer.eos_id is None:
        raise DataError(f"the tokenizer has no eos id to join the {len(texts)} {split} documents with")
    eos = np.array([tokenizer.eos_id], dtype=np.int32)
    return np.concatenate([part for ids in tokenizer.encode_documents(texts) for part in (eos, ids)][1:])


def _check_fits(tokens: dict[str, np.ndarray], seq_len: int) -> None:
    for split, array in tokens.items():
        if array.size <= seq_len and (split == "train" or array.size > 0):  # an empty val split is allowed
            raise DataError(
                f"the {split} split has {array.size} tokens, too few for one window of seq_len + 1 = {seq_len + 1}"
            )


def _counts(counter: Counter) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(counter.items())}


def _check_writable(out: Path) -> None:
    """Fail before any work when `out` cannot be created or written (without creating anything)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"output folder {str(out)!r} cannot be created: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"output folder {str(out)!r} is not writable ({str(existing)!r} denies writing)")


def _write_atomically(final: Path, write: Callable[[Path], None]) -> bool:
    """Run `write(folder)` on a temporary folder beside `final`, then rename it into place; True when another
    process finished the same version first (its folder is kept, ours dropped)."""
    tmp = final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)  # unlike mkdtemp, with the umask's permissions
    except OSError as e:
        raise DataError(f"cannot write to output folder {str(final.parent)!r}: {e}") from None
    try:
        write(tmp)
        os.rename(tmp, final)
        return False
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (final / MANIFEST).is_file():
            return True
        raise DataError(f"cannot write data set {str(final)!r}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
