"""Sources: named corpora from the mirror, cache or download (checksummed); local files, folders, globs, JSONL, gzip."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from mulm_jax.data import DataError
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


def test_wikitext2_holds_out_its_test_split(mirror):
    source = resolve_source("wikitext2")
    assert [(f.path.name, f.held_out) for f in source.files] == [
        ("wikitext-2-valid.txt", False), ("wikitext-2-test.txt", True)]
    assert source.split_documents == "headings"


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
    for name in ("b.txt", "a.md", "sub/c.jsonl.gz", "skip.bin", ".hidden/d.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    paths = [f.path.relative_to(tmp_path).as_posix() for f in resolve_source(str(tmp_path)).files]
    assert paths == ["a.md", "b.txt", "sub/c.jsonl.gz"]


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
