"""Where raw text comes from: named public corpora (mirror, cache, download), local files, folders and globs."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mulm_jax.config import InvalidUtf8
from mulm_jax.data import passkey
from mulm_jax.data.errors import DataError
from mulm_jax.data.tasks import TASKS

TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl")  # read from folders, each optionally followed by .gz
_REPLACEMENT_UTF8 = "\ufffd".encode()


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named source: its mirror / cache file name, public URL and checksum."""

    name: str
    url: str
    sha256: str
    held_out: bool = False  # True: its documents form the validation split


@dataclass(frozen=True)
class NamedSource:
    name: str
    files: tuple[RemoteFile, ...]
    split_documents: str  # how the files' text is cut into documents, see clean.split_documents
    about: str


NAMED_SOURCES: dict[str, NamedSource] = {
    s.name: s
    for s in (
        NamedSource(
            "tinyshakespeare",
            (RemoteFile(
                "tinyshakespeare.txt",
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
            "none",
            "Tiny Shakespeare, one 1.1 MB document split 90/10 contiguously as nanoGPT does"),
        NamedSource(
            "wikitext2",
            (RemoteFile(
                "wikitext-2-valid.txt",
                "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
             RemoteFile(
                "wikitext-2-test.txt",
                "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/test.txt",
                "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
                held_out=True)),
            "headings",
            "WikiText-2 (tokenized, <unk> kept): the validation split as training text, the test split held out"),
    )
}


# Sources whose text is generated here; `NAME:F` makes a generated source the share F of the data set's characters.
GENERATED_SOURCES = {
    "passkey": f"passkey retrieval text, generated (a {passkey.KEY_DIGITS}-digit number in filler sentences, then "
               f"asked for); passkey:F is the share F of the data set's characters, alone {passkey.ALONE_CHARS:,}",
}
DEFAULT_SHARE = 0.2


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str
    held_out: bool = False


@dataclass(frozen=True)
class Source:
    """A `--source` argument resolved to readable files with their checksums."""

    spec: str
    named: bool
    files: tuple[SourceFile, ...]
    split_documents: str
    generated: Optional[str] = None  # a GENERATED_SOURCES name: no files, its text is made at assembly
    share: Optional[float] = None  # of a generated source: its share of the data set's characters (None: default)
    task: Optional[str] = None  # a TASKS name: no files, its pairs are made at assembly

    def identity(self) -> dict:
        """What the dataset version depends on: content checksums, not paths (a generated source: a checksum of
        a sample of its text)."""
        identity = {"named": self.spec if self.named else None, "split_documents": self.split_documents,
                    "files": [{"sha256": f.sha256, "held_out": f.held_out} for f in self.files]}
        if self.generated:
            identity.update(generated=self.generated, share=self.share, sha256=passkey.fingerprint())
        if self.task:
            identity.update(task=self.task, sha256=TASKS[self.task].fingerprint())
        return identity

    def describe(self) -> dict:
        described = {"spec": self.spec, "split_documents": self.split_documents,
                     "files": [{"name": f.path.name, "sha256": f.sha256, "bytes": f.path.stat().st_size,
                                "held_out": f.held_out} for f in self.files]}
        if self.generated:
            described.update(generated=self.generated, share=self.share)
        if self.task:
            described.update(task=self.task)
        return described


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def mirror_dir() -> Path | None:
    value = os.environ.get("MULM_DATA_MIRROR")
    return Path(value) if value else None


def cache_dir() -> Path:
    return Path(os.environ.get("MULM_CACHE") or Path.home() / ".cache" / "mulm_jax")


def resolve_source(spec: str, split_documents: str | None = None) -> Source:
    """A named source, file, folder or glob -> its files; `split_documents` None keeps the source's own scheme."""
    name, colon, share = spec.partition(":")
    if name in GENERATED_SOURCES:
        return Source(spec, True, (), "none", generated=name, share=_share(spec, share) if colon else None)
    if spec in TASKS:
        return Source(spec, True, (), "none", task=spec)
    if spec in NAMED_SOURCES:
        named = NAMED_SOURCES[spec]
        files = tuple(SourceFile(fetch(spec, f), f.sha256, f.held_out) for f in named.files)
        return Source(spec, True, files, split_documents or named.split_documents)
    paths = local_paths(spec)
    return Source(spec, False, tuple(SourceFile(p, sha256_file(p)) for p in paths), split_documents or "none")


def _share(spec: str, text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 < share < 1.0:
        raise DataError(f"source {spec!r}: the share after ':' must be a number in (0, 1), e.g. "
                        f"{spec.partition(':')[0]}:{DEFAULT_SHARE}")
    return share


def local_paths(spec: str) -> list[Path]:
    """The files a file, folder or glob source reads, sorted (a folder's text files, hidden ones left out)."""
    pattern = os.path.expanduser(spec)
    if any(c in pattern for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not paths:
            raise DataError(f"source {spec!r}: the pattern matches no files")
        return paths
    path = Path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and _is_text_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not paths:
            raise DataError(f"source {spec!r}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)}, "
                            "optionally .gz)")
        return paths
    raise DataError(f"source {spec!r} not found: it is not a named source ({', '.join(NAMED_SOURCES)}), "
                    f"a generated one ({', '.join([*GENERATED_SOURCES, *TASKS])}) nor an existing file, folder or "
                    "glob")


def _is_text_file(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith(TEXT_SUFFIXES)


def fetch(source: str, remote: RemoteFile) -> Path:
    """The verified local copy of a named source's file: from the mirror, else the cache, else downloaded."""
    mirror = mirror_dir()
    if mirror is not None and (mirror / remote.name).is_file():
        return _verified(source, mirror / remote.name, remote)
    cached = cache_dir() / remote.name
    if cached.is_file():
        return _verified(source, cached, remote)
    return _download(source, remote, cached)


def _verified(source: str, path: Path, remote: RemoteFile) -> Path:
    got = sha256_file(path)
    if got != remote.sha256:
        raise DataError(f"source {source!r}: checksum mismatch for {path}: sha256 {got}, expected {remote.sha256}")
    return path


def _download(source: str, remote: RemoteFile, dest: Path) -> Path:
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(remote.url, timeout=60) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:
            mirror = mirror_dir()
            where = f"the mirror {mirror} (MULM_DATA_MIRROR), " if mirror else ""
            raise DataError(f"source {source!r}: {remote.name} is not in {where}the cache {dest.parent} "
                            f"(MULM_CACHE), and downloading {remote.url} failed: {e}") from None
        _verified(source, part, remote)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def read_texts(path: Path, text_field: str, invalid_utf8: InvalidUtf8) -> tuple[list[str], int]:
    """The texts of one file (one per file, or one per JSONL line) and how many invalid UTF-8 bytes were replaced."""
    text, replaced = _read_text(path, invalid_utf8)
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        return _jsonl_texts(text, path, text_field), replaced
    return [text], replaced


def read_records(path: Path, invalid_utf8: InvalidUtf8) -> tuple[list[tuple[int, object]], int]:
    """The records of a JSONL file with their line numbers (blank lines skipped), and how many invalid UTF-8
    bytes were replaced."""
    text, replaced = _read_text(path, invalid_utf8)
    return list(_jsonl_records(text, path)), replaced


def _read_text(path: Path, invalid_utf8: InvalidUtf8) -> tuple[str, int]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read source file {path}: {e}") from None
    text, replaced = _decode(data, path, invalid_utf8)
    return text.replace("\r\n", "\n").replace("\r", "\n"), replaced


def _decode(data: bytes, path: Path, invalid_utf8: InvalidUtf8) -> tuple[str, int]:
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as e:
        if invalid_utf8 == "reject":
            where = " (after gzip decompression)" if path.name.endswith(".gz") else ""
            raise DataError(f"{path}: invalid UTF-8 at byte offset {e.start}{where}; "
                            "use --invalid-utf8 replace to replace such bytes with U+FFFD") from None
    text = data.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - data.count(_REPLACEMENT_UTF8)


def _jsonl_records(text: str, path: Path) -> Iterator[tuple[int, object]]:
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _jsonl_texts(text: str, path: Path, text_field: str) -> list[str]:
    texts = []
    for lineno, record in _jsonl_records(text, path):
        if not isinstance(record, dict) or text_field not in record:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}:{lineno}: no {text_field!r} field (found: {keys}); choose it with --text-field")
        value = record[text_field]
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}: field {text_field!r} is a {type(value).__name__}, expected a string")
        texts.append(value)
    return texts
