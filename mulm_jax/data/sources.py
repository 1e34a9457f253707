"""Where raw text comes from: named public corpora (mirror, cache, download), local files, folders, globs, Parquet."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mulm_jax.config import InvalidUtf8
from mulm_jax.data import passkey, recall
from mulm_jax.data.errors import DataError
from mulm_jax.data.tasks import TASKS

TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl")  # read from folders, each optionally followed by .gz
PARQUET_SUFFIX = ".parquet"  # read from folders too: a table whose text is in the --text-field column
_REPLACEMENT_UTF8 = "\ufffd".encode()


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named source: its mirror / cache file name, public URL and checksum."""

    name: str
    url: str
    sha256: str
    held_out: bool = False  # True: its documents form the validation split
    bytes: int = 0  # its size


@dataclass(frozen=True)
class Split:
    """One split of a released archive: the member file that holds it, about how many bytes it has, and its
    sha256 where pinned (a split file found on its own is verified against it; one extracted from the archive is
    verified through the archive's)."""

    name: str  # train, valid or test
    member: str  # its path inside the archive, e.g. wikitext-2-raw/wiki.train.raw
    bytes: int  # exact where sha256 is pinned, else about
    sha256: Optional[str] = None

    @property
    def flat_name(self) -> str:
        """Its name laid flat in a mirror folder: FOLDER-SPLIT.txt, e.g. wikitext-2-valid.txt."""
        return f"{self.member.split('/')[0]}-{self.name}.txt"


@dataclass(frozen=True)
class Archive:
    """A data set as its authors released it: one .zip (mirror / cache file name, public URL, checksum, size) holding
    its splits."""

    release: str  # what split records call it: wikitext2:train
    name: str
    url: str
    sha256: str
    bytes: int
    splits: tuple[Split, ...]

    def split(self, name: str) -> Split:
        return next(s for s in self.splits if s.name == name)


@dataclass(frozen=True)
class NamedSource:
    name: str
    files: tuple[RemoteFile, ...]
    split_documents: str  # how the files' text is cut into documents, see clean.split_documents
    about: str
    archive: Optional[Archive] = None  # a released data set: it trains on one split and validates on another
    trains_on: str = "train"
    validates_on: str = "valid"


def _wikitext(
    release: str,
    folder: str,
    zip_sha256: str,
    zip_bytes: int,
    suffix: str,
    splits: dict[str, tuple[int, Optional[str]]],
) -> Archive:
    """A WikiText release (Merity et al. 2016) at the authors' site: FOLDER.zip holds FOLDER/wiki.SPLIT.SUFFIX."""
    name = f"{folder}-v1.zip"
    return Archive(
        release,
        name,
        f"https://wikitext.smerity.com/{name}",
        zip_sha256,
        zip_bytes,
        tuple(Split(split, f"{folder}/wiki.{split}.{suffix}", size, sha) for split, (size, sha) in splits.items()),
    )


# The archives' sha256 and sizes are those Hugging Face's `wikitext` loader pinned for the same files; a split's
# sha256 is pinned where known (the tokenized WikiText-2 splits, the raw WikiText-2 test split), its size is about
# that for the others.
WIKITEXT2 = _wikitext(
    "wikitext2",
    "wikitext-2",
    "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c",
    4_475_746,
    "tokens",
    {
        "train": (10_797_148, "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
        "valid": (1_121_681, "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        "test": (1_256_449, "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
    },
)
WIKITEXT2_RAW = _wikitext(
    "wikitext2-raw",
    "wikitext-2-raw",
    "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
    4_721_645,
    "raw",
    {
        "train": (10_940_000, None),
        "valid": (1_147_000, None),
        "test": (1_290_590, "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"),
    },
)
WIKITEXT103 = _wikitext(
    "wikitext103",
    "wikitext-103",
    "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590",
    190_229_076,
    "tokens",
    {"train": (539_160_000, None), "valid": (1_142_000, None), "test": (1_281_000, None)},
)
WIKITEXT103_RAW = _wikitext(
    "wikitext103-raw",
    "wikitext-103-raw",
    "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
    191_984_949,
    "raw",
    {"train": (540_520_000, None), "valid": (1_147_000, None), "test": (1_291_000, None)},
)


NAMED_SOURCES: dict[str, NamedSource] = {
    s.name: s
    for s in (
        NamedSource(
            "tinyshakespeare",
            (
                RemoteFile(
                    "tinyshakespeare.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    bytes=1_115_394,
                ),
            ),
            "none",
            "Tiny Shakespeare, one 1.1 MB document split 90/10 contiguously as nanoGPT does",
        ),
        NamedSource(
            "wikitext2",
            (),
            "headings",
            "WikiText-2 as released, tokenized with <unk> for rare words: "
            "trains on its train split, validates on its valid split",
            WIKITEXT2,
        ),
        NamedSource(
            "wikitext2-raw",
            (),
            "headings",
            "WikiText-2 as released, raw text: trains on its train split, validates on its valid split",
            WIKITEXT2_RAW,
        ),
        NamedSource(
            "wikitext103",
            (),
            "headings",
            "WikiText-103 as released, tokenized with <unk> for rare words: "
            "trains on its train split, validates on its valid split",
            WIKITEXT103,
        ),
        NamedSource(
            "wikitext103-raw",
            (),
            "headings",
            "WikiText-103 as released, raw text: trains on its train split, validates on its valid split",
            WIKITEXT103_RAW,
        ),
        NamedSource(
            "wikitext2-valid-as-train",
            (),
            "headings",
            "tokenized WikiText-2's valid split as training "
            "text and its test split as validation, for where only those two are at hand (the development "
            "mirror)",
            WIKITEXT2,
            trains_on="valid",
            validates_on="test",
        ),
    )
}


# Sources whose text is generated here; `NAME:F` makes a generated source the share F of the data set's characters.
GENERATED_SOURCES = {
    "passkey": f"passkey retrieval text, generated (a {passkey.KEY_DIGITS}-digit number in filler sentences, then "
    f"asked for); passkey:F is the share F of the data set's characters, alone {passkey.ALONE_CHARS:,}",
    "recall": f"associative recall text, generated ({recall.MIN_PAIRS} to {recall.MAX_PAIRS} key-value pairs such as "
    f"'a3 k7', then every key asked for again); recall:F is the share F of the data set's characters, alone "
    f"{recall.ALONE_CHARS:,}",
}
GENERATORS = {"passkey": passkey, "recall": recall}  # each: documents, fingerprint, check_covers, ALONE_CHARS
DEFAULT_SHARE = 0.2


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str
    held_out: bool = False
    split: Optional[str] = None  # a released split, e.g. wikitext2:train


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
        identity = {
            "named": self.spec if self.named else None,
            "split_documents": self.split_documents,
            "files": [
                {"sha256": f.sha256, "held_out": f.held_out, **({"split": f.split} if f.split else {})}
                for f in self.files
            ],
        }
        if self.generated:
            identity.update(generated=self.generated, share=self.share, sha256=GENERATORS[self.generated].fingerprint())
        if self.task:
            identity.update(task=self.task, sha256=TASKS[self.task].fingerprint())
        return identity

    def describe(self) -> dict:
        described = {
            "spec": self.spec,
            "split_documents": self.split_documents,
            "files": [
                {
                    "name": f.path.name,
                    "sha256": f.sha256,
                    "bytes": f.path.stat().st_size,
                    "held_out": f.held_out,
                    **({"split": f.split} if f.split else {}),
                }
                for f in self.files
            ],
        }
        if any(f.split for f in self.files):  # which released split trained and which validated
            described["splits"] = {
                "train": next(f.split for f in self.files if not f.held_out),
                "val": next(f.split for f in self.files if f.held_out),
            }
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


def resolve_source(spec: str, split_documents: str | None = None, download: bool = True) -> Source:
    """A named source, file, folder or glob -> its files; `split_documents` None keeps the source's own scheme;
    `download` False: a named source's files must be at hand (mirror or cache), a DataError otherwise."""
    name, colon, share = spec.partition(":")
    if name in GENERATED_SOURCES:
        return Source(spec, True, (), "none", generated=name, share=_share(spec, share) if colon else None)
    if spec in TASKS:
        return Source(spec, True, (), "none", task=spec)
    if spec in NAMED_SOURCES:
        named = NAMED_SOURCES[spec]
        if named.archive:  # never another split in place of a missing one
            files = tuple(
                fetch_split(spec, named.archive, named.archive.split(split), held_out, download)
                for split, held_out in ((named.trains_on, False), (named.validates_on, True))
            )
        else:
            files = tuple(SourceFile(fetch(spec, f, download), f.sha256, f.held_out) for f in named.files)
        return Source(spec, True, files, split_documents or named.split_documents)
    paths = local_paths(spec)
    return Source(spec, False, tuple(SourceFile(p, sha256_file(p)) for p in paths), split_documents or "none")


def _share(spec: str, text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 < share < 1.0:
        raise DataError(
            f"source {spec!r}: the share after ':' must be a number in (0, 1), e.g. "
            f"{spec.partition(':')[0]}:{DEFAULT_SHARE}"
        )
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
        paths = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and _is_text_file(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not paths:
            raise DataError(
                f"source {spec!r}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)}, "
                f"optionally .gz, or {PARQUET_SUFFIX})"
            )
        return paths
    raise DataError(
        f"source {spec!r} not found: it is not a named source ({', '.join(NAMED_SOURCES)}), "
        f"a generated one ({', '.join([*GENERATED_SOURCES, *TASKS])}) nor an existing file, folder or "
        "glob"
    )


def _is_text_file(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith(TEXT_SUFFIXES) or path.name.endswith(PARQUET_SUFFIX)


def fetch(source: str, remote: RemoteFile, download: bool = True) -> Path:
    """The verified local copy of a named source's file: from the mirror, else the cache, else downloaded."""
    mirror = mirror_dir()
    if mirror is not None and (mirror / remote.name).is_file():
        return _verified(source, mirror / remote.name, remote)
    cached = cache_dir() / remote.name
    if cached.is_file():
        return _verified(source, cached, remote)
    mirror_part = f"the mirror {mirror} (MULM_DATA_MIRROR), " if mirror else ""
    return _download(
        source, remote, cached, f"{remote.name} is not in {mirror_part}the cache {cached.parent} (MULM_CACHE)", download
    )


def fetch_split(source: str, archive: Archive, split: Split, held_out: bool, download: bool = True) -> SourceFile:
    """One split of a release, verified: its file in the mirror (as the archive lays it out, or flat), else
    extracted from the archive: already in the cache, else from the archive in the mirror, the cache, or
    downloaded."""
    label = f"{archive.release}:{split.name}"
    mirror = mirror_dir()
    for path in (mirror / split.member, mirror / split.flat_name) if mirror else ():
        if path.is_file():
            return SourceFile(path, _split_checksum(source, path, split), held_out, label)
    extracted = cache_dir() / split.member
    if extracted.is_file() and (sha256 := split.sha256 or _recorded(extracted)):
        if (got := sha256_file(extracted)) != sha256:
            raise DataError(
                f"source {source!r}: checksum mismatch for {extracted}: sha256 {got}, expected {sha256}; "
                "delete it to extract it afresh"
            )
        return SourceFile(extracted, sha256, held_out, label)
    if mirror is not None and (mirror / archive.name).is_file():
        zip_path = _verified(source, mirror / archive.name, archive)
    elif (cache_dir() / archive.name).is_file():
        zip_path = _verified(source, cache_dir() / archive.name, archive)
    else:
        in_mirror = (
            f"the mirror {mirror} (MULM_DATA_MIRROR) holds neither {split.member}, {split.flat_name} nor {archive.name}"
            if mirror
            else "no mirror is set (MULM_DATA_MIRROR)"
        )
        looked = (
            f"its {split.name} split is not at hand: {in_mirror}, and the cache {cache_dir()} (MULM_CACHE) "
            f"neither {split.member} nor {archive.name}"
        )
        zip_path = _download(
            source,
            archive,
            cache_dir() / archive.name,
            looked,
            download,
            "; put the archive or the split file in the mirror folder. No other split is read in its place",
        )
    return SourceFile(extracted, _extract(source, zip_path, split, extracted), held_out, label)


def _split_checksum(source: str, path: Path, split: Split) -> str:
    """A split file's sha256, checked where one is pinned."""
    got = sha256_file(path)
    if split.sha256 and got != split.sha256:
        raise DataError(
            f"source {source!r}: checksum mismatch for {path} ({split.member}): sha256 {got}, expected {split.sha256}"
        )
    return got


def _recorded(extracted: Path) -> Optional[str]:
    """The sha256 recorded when a split without a pinned one was extracted from its verified archive."""
    record = extracted.with_name(extracted.name + ".sha256")
    return record.read_text().strip() if record.is_file() else None


def _extract(source: str, zip_path: Path, split: Split, dest: Path) -> str:
    """Extract one split from its verified archive into the cache; its sha256 (checked where one is pinned, else
    recorded beside it)."""
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path) as archive, archive.open(split.member) as member, open(part, "wb") as f:
            while chunk := member.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        got = digest.hexdigest()
        if split.sha256 and got != split.sha256:
            raise DataError(
                f"source {source!r}: checksum mismatch for {split.member} in {zip_path}: sha256 {got}, "
                f"expected {split.sha256}"
            )
        if not split.sha256:
            dest.with_name(dest.name + ".sha256").write_text(got + "\n")
        os.replace(part, dest)
        return got
    except KeyError:
        raise DataError(f"source {source!r}: the archive {zip_path} has no {split.member}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(
            f"source {source!r}: cannot extract {split.member} from {zip_path} into {dest.parent}: {e}"
        ) from None
    finally:
        part.unlink(missing_ok=True)


def _verified(source: str, path: Path, remote: RemoteFile | Archive) -> Path:
    got = sha256_file(path)
    if got != remote.sha256:
        raise DataError(f"source {source!r}: checksum mismatch for {path}: sha256 {got}, expected {remote.sha256}")
    return path


def _download(
    source: str, remote: RemoteFile | Archive, dest: Path, missing: str, download: bool = True, advice: str = ""
) -> Path:
    """Download `remote` into the cache as `dest`, verified; `missing` says what was looked for first."""
    if not download:
        raise DataError(f"source {source!r}: {missing}, and downloading {remote.url} was not allowed{advice}")
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    request = urllib.request.Request(remote.url, headers={"User-Agent": "mulm_jax"})  # some hosts refuse urllib's
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:
            raise DataError(f"source {source!r}: {missing}, and downloading {remote.url} failed: {e}{advice}") from None
        _verified(source, part, remote)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def known_train_bytes(spec: str, val_fraction: float) -> Optional[int]:
    """About how many bytes of text a source gives the training split, without reading it: a named source's from
    its known size, a plain text file's (or folder's, or glob's) from its size on disk; None when not known (a
    compressed, JSONL or Parquet file, a generated source)."""
    named = NAMED_SOURCES.get(spec)
    if named and named.archive:
        return named.archive.split(named.trains_on).bytes
    if named:
        return round(sum(f.bytes for f in named.files if not f.held_out) * (1 - val_fraction))
    if spec.partition(":")[0] in GENERATED_SOURCES or spec in TASKS:
        return None
    try:
        paths = local_paths(spec)
    except DataError:
        return None
    if any(not p.name.endswith((".txt", ".text", ".md")) for p in paths):
        return None
    return round(sum(p.stat().st_size for p in paths) * (1 - val_fraction))


def read_texts(path: Path, text_field: str, invalid_utf8: InvalidUtf8) -> tuple[list[str], int]:
    """The texts of one file (one per file, one per JSONL line, or one per Parquet row) and how many invalid UTF-8
    bytes were replaced."""
    if path.name.endswith(PARQUET_SUFFIX):
        return _parquet_texts(path, text_field, invalid_utf8)
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
            raise DataError(
                f"{path}: invalid UTF-8 at byte offset {e.start}{where}; "
                "use --invalid-utf8 replace to replace such bytes with U+FFFD"
            ) from None
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


def _parquet_texts(path: Path, text_field: str, invalid_utf8: InvalidUtf8) -> tuple[list[str], int]:
    """The `text_field` column of a Parquet file, one text per row (read with pyarrow; a binary column is decoded
    as UTF-8 under the `invalid_utf8` rule)."""
    import pyarrow as pa  # only Parquet sources need it
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if text_field not in schema.names:
            raise DataError(
                f"{path}: no {text_field!r} column (found: {', '.join(schema.names)}); choose it with --text-field"
            )
        column = pq.read_table(path, columns=[text_field]).column(text_field)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read Parquet source file {path}: {e}") from None
    if not any(
        is_kind(column.type)
        for is_kind in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    ):
        raise DataError(f"{path}: column {text_field!r} is of type {column.type}, expected strings")
    if column.null_count:
        row = column.is_null().to_pylist().index(True)
        raise DataError(f"{path}: row {row}: column {text_field!r} is null")
    texts, replaced = [], 0
    for row, data in enumerate(column.cast(pa.large_binary()).to_pylist()):  # bytes: UTF-8 checked here
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            if invalid_utf8 == "reject":
                raise DataError(
                    f"{path}: row {row}: invalid UTF-8 at byte offset {e.start} of column "
                    f"{text_field!r}; use --invalid-utf8 replace to replace such bytes with U+FFFD"
                ) from None
            text = data.decode("utf-8", errors="replace")
            replaced += text.count("\ufffd") - data.count(_REPLACEMENT_UTF8)
        texts.append(text.replace("\r\n", "\n").replace("\r", "\n"))
    return texts, replaced
