"""Sources: named corpora from the mirror, cache or download (checksummed); local files, folders, globs, JSONL, gzip,
Parquet (released splits: test_wikitext.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mulm_jax.config import DataConfig
from mulm_jax.data import DataError, Tokenizer, assemble, load_tokens
from mulm_jax.data import sources
from mulm_jax.data.sources import NamedSource, RemoteFile, read_texts, resolve_source

TEXT = b"to be or not to be\n"


@pytest.fixture
def fake_named(tmp_path, monkeypatch) -> Path:
    """A named source `fake` whose public copy is the file:// URL of `origin/fake.txt`; empty mirror and cache."""
    origin = tmp_path / "origin" / "fake.txt"
    origin.parent.mkdir()
    origin.write_bytes(TEXT)
    remote = RemoteFile("fake.txt", origin.as_uri(), hashlib.sha256(TEXT).hexdigest())
    monkeypatch.setitem(sources.NAMED_SOURCES, "fake", NamedSource("fake", (remote,), "none", "test corpus"))
    for name in ("mirror", "cache"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("MULM_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("MULM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_named_source_is_read_from_the_mirror(mirror):
    source = resolve_source("tinyshakespeare")
    assert source.files[0].path == mirror / "tinyshakespeare.txt"
    assert source.files[0].sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_mirror_comes_before_the_cache(fake_named):
    (fake_named / "mirror" / "fake.txt").write_bytes(TEXT)
    (fake_named / "cache" / "fake.txt").write_bytes(TEXT)
    assert resolve_source("fake").files[0].path == fake_named / "mirror" / "fake.txt"


def test_cache_is_used_when_the_mirror_lacks_the_file(fake_named):
    (fake_named / "cache" / "fake.txt").write_bytes(TEXT)
    (fake_named / "origin" / "fake.txt").unlink()  # no download possible
    assert resolve_source("fake").files[0].path == fake_named / "cache" / "fake.txt"


def test_named_source_is_downloaded_into_the_cache(fake_named):
    source = resolve_source("fake")
    assert source.files[0].path == fake_named / "cache" / "fake.txt"
    assert source.files[0].path.read_bytes() == TEXT


def test_checksum_mismatch_in_the_mirror_is_an_error(fake_named):
    (fake_named / "mirror" / "fake.txt").write_bytes(b"tampered\n")
    with pytest.raises(DataError, match=r"checksum mismatch for .*mirror/fake.txt"):
        resolve_source("fake")


def test_downloaded_file_with_wrong_checksum_is_an_error_and_not_cached(fake_named):
    (fake_named / "origin" / "fake.txt").write_bytes(b"tampered\n")
    with pytest.raises(DataError, match="checksum mismatch"):
        resolve_source("fake")
    assert list((fake_named / "cache").iterdir()) == []


def test_failed_download_names_mirror_cache_and_url(fake_named):
    (fake_named / "origin" / "fake.txt").unlink()
    with pytest.raises(DataError, match=r"'fake': fake.txt is not in the mirror .* the cache .* downloading file://"):
        resolve_source("fake")
    assert list((fake_named / "cache").iterdir()) == []


def test_unknown_source_lists_the_named_sources(tmp_path):
    with pytest.raises(DataError, match=r"source 'nosuch' not found: .*tinyshakespeare, wikitext2"):
        resolve_source("nosuch")


def test_folder_source_reads_its_text_files_in_order(tmp_path):
    for name in ("b.txt", "a.md", "sub/c.jsonl.gz", "sub/d.parquet", "skip.bin", ".hidden/d.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    paths = [f.path.relative_to(tmp_path).as_posix() for f in resolve_source(str(tmp_path)).files]
    assert paths == ["a.md", "b.txt", "sub/c.jsonl.gz", "sub/d.parquet"]


def test_glob_source_reads_matching_files_and_fails_when_none_match(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name)
    assert [f.path.name for f in resolve_source(str(tmp_path / "x*.txt")).files] == ["x1.txt", "x2.txt"]
    with pytest.raises(DataError, match="matches no files"):
        resolve_source(str(tmp_path / "z*.txt"))


def test_jsonl_gzip_source_gives_one_text_per_record(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    records = [{"body": "first"}, {"body": "second\nline"}]
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
    assert read_texts(path, "body", "reject") == (["first", "second\nline"], 0)


def test_jsonl_record_without_the_text_field_names_file_line_and_keys(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no"}\n')
    with pytest.raises(DataError, match=r"docs.jsonl:2: no 'text' field \(found: content\)"):
        read_texts(path, "text", "replace")


def test_invalid_utf8_is_rejected_naming_the_file_and_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xc3\xa9 ok \xff\xfe rest")
    with pytest.raises(DataError, match=r"bad.txt: invalid UTF-8 at byte offset 9"):
        read_texts(path, "text", "reject")


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a\xffb \xef\xbf\xbd c\xc3")  # two bad sequences and one genuine U+FFFD
    texts, replaced = read_texts(path, "text", "replace")
    assert texts == ["a\ufffdb \ufffd c\ufffd"]
    assert replaced == 2


def test_windows_and_old_mac_newlines_become_newlines(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"a\r\nb\rc\n")
    assert read_texts(path, "text", "reject") == (["a\nb\nc\n"], 0)


def write_parquet(path: Path, **columns: list) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_source_gives_one_text_per_row_of_the_text_field(tmp_path):
    path = write_parquet(tmp_path / "docs.parquet", id=[1, 2], body=["first", "second\r\nline"])
    assert read_texts(path, "body", "reject") == (["first", "second\nline"], 0)


def test_parquet_without_the_text_field_names_the_file_and_its_columns(tmp_path):
    path = write_parquet(tmp_path / "docs.parquet", id=[1], content=["no"])
    with pytest.raises(
        DataError,
        match=r"docs.parquet: no 'text' column \(found: id, content\); choose it with "
        r"--text-field",
    ):
        read_texts(path, "text", "replace")


def test_parquet_null_or_non_string_text_is_an_error_naming_the_row(tmp_path):
    with pytest.raises(DataError, match=r"docs.parquet: row 1: column 'text' is null"):
        read_texts(write_parquet(tmp_path / "docs.parquet", text=["ok", None]), "text", "replace")
    with pytest.raises(DataError, match=r"nums.parquet: column 'text' is of type int64, expected strings"):
        read_texts(write_parquet(tmp_path / "nums.parquet", text=[1, 2]), "text", "replace")


def test_parquet_binary_text_follows_the_invalid_utf8_rule(tmp_path):
    path = write_parquet(tmp_path / "raw.parquet", text=pa.array([b"ok", b"caf\xc3\xa9 \xff"], pa.binary()))
    assert read_texts(path, "text", "replace") == (["ok", "caf\u00e9 \ufffd"], 1)
    with pytest.raises(DataError, match=r"raw.parquet: row 1: invalid UTF-8 at byte offset 6 of column 'text'"):
        read_texts(path, "text", "reject")


def test_a_folder_of_parquet_files_assembles_into_a_data_set(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    docs = [f"document {i}: " + " ".join(f"w{i * 7 + j}" for j in range(30)) for i in range(20)]
    write_parquet(folder / "part-0.parquet", text=docs[:12], n=list(range(12)))
    write_parquet(folder / "part-1.parquet", text=docs[12:], n=list(range(12, 20)))
    result = assemble(DataConfig(sources=(str(folder),), out_dir=str(tmp_path / "out")))
    m = result.manifest
    assert [f["name"] for f in m["sources"][0]["files"]] == ["part-0.parquet", "part-1.parquet"]
    assert (m["documents"]["read"], m["documents"]["train"], m["documents"]["val"]) == (20, 18, 2)
    tok = Tokenizer.load(result.path)
    train = tok.decode(load_tokens(result.path, "train")[load_tokens(result.path, "train") != tok.eos_id])
    assert sum(doc in train for doc in docs) == 18
