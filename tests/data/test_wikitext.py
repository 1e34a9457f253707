"""Released splits: WikiText's archives and split files from the mirror, cache or download, verified; the manifest
says which split trained and which validated; a missing split is an error, never replaced by another."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from mulm_jax.config import DataConfig
from mulm_jax.data import DataError, Tokenizer, assemble, load_tokens
from mulm_jax.data import sources
from mulm_jax.data.sources import NAMED_SOURCES, Split, resolve_source, sha256_file

# Three articles per split, in WikiText's layout: ` = Title = ` lines start them; training has every character.
TEXTS = {
    split: "".join(
        f" = {split.title()} {i} = \n\n {split} text of article {i} , with some words .\n\n" for i in range(3)
    )
    for split in ("train", "valid", "test")
}
TEXTS["train"] += " Valid and Test articles are held out : valid , test .\n"


def make_archive(texts: dict[str, str] = TEXTS) -> bytes:
    """A .zip laid out as the raw WikiText-2 release: wikitext-2-raw/wiki.{train,valid,test}.raw."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for split, text in texts.items():
            archive.writestr(f"wikitext-2-raw/wiki.{split}.raw", text)
    return buffer.getvalue()


@pytest.fixture
def release(tmp_path, monkeypatch) -> Path:
    """The named source `wikitext2-raw`, its archive a small one whose public copy is `origin/` (a file:// URL) and
    whose valid split's checksum is pinned; empty mirror and cache."""
    data = make_archive()
    origin = tmp_path / "origin" / "wikitext-2-raw-v1.zip"
    origin.parent.mkdir()
    origin.write_bytes(data)
    real = NAMED_SOURCES["wikitext2-raw"].archive
    splits = tuple(
        Split(
            s.name,
            s.member,
            len(TEXTS[s.name]),
            hashlib.sha256(TEXTS[s.name].encode()).hexdigest() if s.name == "valid" else None,
        )
        for s in real.splits
    )
    archive = dataclasses.replace(
        real, url=origin.as_uri(), sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), splits=splits
    )
    monkeypatch.setitem(
        NAMED_SOURCES, "wikitext2-raw", dataclasses.replace(NAMED_SOURCES["wikitext2-raw"], archive=archive)
    )
    for name in ("mirror", "cache"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("MULM_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("MULM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def split_texts(source) -> list[tuple[str, bool, str]]:
    return [(f.split, f.held_out, f.path.read_text()) for f in source.files]


def test_the_four_wikitext_sources_read_their_release_archives_at_the_authors_site():
    expected = {
        "wikitext2": ("wikitext-2-v1.zip", "wikitext-2/wiki.{}.tokens"),
        "wikitext2-raw": ("wikitext-2-raw-v1.zip", "wikitext-2-raw/wiki.{}.raw"),
        "wikitext103": ("wikitext-103-v1.zip", "wikitext-103/wiki.{}.tokens"),
        "wikitext103-raw": ("wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.{}.raw"),
    }
    for name, (zip_name, member) in expected.items():
        source = NAMED_SOURCES[name]
        archive = source.archive
        assert (archive.release, archive.name, archive.url) == (
            name,
            zip_name,
            f"https://wikitext.smerity.com/{zip_name}",
        )
        assert len(archive.sha256) == 64 and archive.bytes > 4_000_000
        assert [(s.name, s.member) for s in archive.splits] == [
            (split, member.format(split)) for split in ("train", "valid", "test")
        ]
        assert (source.trains_on, source.validates_on, source.split_documents) == ("train", "valid", "headings")


def test_splits_are_extracted_from_the_verified_archive_in_the_mirror(release):
    (release / "mirror" / "wikitext-2-raw-v1.zip").write_bytes(make_archive())
    source = resolve_source("wikitext2-raw")
    assert split_texts(source) == [
        ("wikitext2-raw:train", False, TEXTS["train"]),
        ("wikitext2-raw:valid", True, TEXTS["valid"]),
    ]  # the test split is never read
    assert [f.path for f in source.files] == [
        release / "cache" / "wikitext-2-raw" / f"wiki.{s}.raw" for s in ("train", "valid")
    ]
    assert source.describe()["splits"] == {"train": "wikitext2-raw:train", "val": "wikitext2-raw:valid"}
    # extracted once: the cache's copy is used (and verified) without the archive
    (release / "mirror" / "wikitext-2-raw-v1.zip").unlink()
    assert split_texts(resolve_source("wikitext2-raw", download=False)) == split_texts(source)


def test_split_files_in_the_mirror_are_read_as_the_archive_lays_them_out_or_flat(release):
    unzipped = release / "mirror" / "wikitext-2-raw"
    unzipped.mkdir()
    (unzipped / "wiki.train.raw").write_text(TEXTS["train"])
    (release / "mirror" / "wikitext-2-raw-valid.txt").write_text(TEXTS["valid"])
    source = resolve_source("wikitext2-raw", download=False)
    assert [f.path for f in source.files] == [
        unzipped / "wiki.train.raw",
        release / "mirror" / "wikitext-2-raw-valid.txt",
    ]
    assert [f.sha256 for f in source.files] == [sha256_file(f.path) for f in source.files]


def test_the_archive_is_downloaded_verified_into_the_cache_and_its_splits_extracted(release):
    source = resolve_source("wikitext2-raw")
    assert (release / "cache" / "wikitext-2-raw-v1.zip").read_bytes() == make_archive()
    assert split_texts(source)[0] == ("wikitext2-raw:train", False, TEXTS["train"])
    # a split without a pinned checksum has the one it was extracted with recorded beside it, and is checked
    train = release / "cache" / "wikitext-2-raw" / "wiki.train.raw"
    assert (train.parent / "wiki.train.raw.sha256").read_text().strip() == hashlib.sha256(
        TEXTS["train"].encode()
    ).hexdigest()
    train.write_text("tampered")
    with pytest.raises(DataError, match=r"checksum mismatch for .*cache/wikitext-2-raw/wiki.train.raw"):
        resolve_source("wikitext2-raw")


def test_an_archive_whose_checksum_differs_is_refused_naming_the_file(release):
    (release / "mirror" / "wikitext-2-raw-v1.zip").write_bytes(make_archive({**TEXTS, "train": "tampered"}))
    with pytest.raises(DataError, match=r"'wikitext2-raw': checksum mismatch for .*mirror/wikitext-2-raw-v1.zip"):
        resolve_source("wikitext2-raw")


def test_a_split_file_whose_pinned_checksum_differs_is_refused_naming_the_file(release):
    (release / "mirror" / "wikitext-2-raw-train.txt").write_text(TEXTS["train"])
    (release / "mirror" / "wikitext-2-raw-valid.txt").write_text(TEXTS["valid"] + "tampered")
    with pytest.raises(
        DataError,
        match=r"checksum mismatch for .*mirror/wikitext-2-raw-valid.txt "
        r"\(wikitext-2-raw/wiki.valid.raw\)",
    ):
        resolve_source("wikitext2-raw")


def test_a_missing_train_split_is_refused_naming_the_files_the_mirror_and_the_url(release):
    (release / "origin" / "wikitext-2-raw-v1.zip").unlink()  # no download possible
    (release / "mirror" / "wikitext-2-raw-valid.txt").write_text(TEXTS["valid"])
    (release / "mirror" / "wikitext-2-raw-test.txt").write_text(TEXTS["test"])
    with pytest.raises(DataError) as error:
        resolve_source("wikitext2-raw")
    message = str(error.value)
    for part in (
        "its train split is not at hand",
        f"the mirror {release / 'mirror'}",
        "wikitext-2-raw/wiki.train.raw",
        "wikitext-2-raw-train.txt",
        "wikitext-2-raw-v1.zip",
        f"the cache {release / 'cache'}",
        f"downloading {(release / 'origin' / 'wikitext-2-raw-v1.zip').as_uri()} failed",
        "No other split is read in its place",
    ):
        assert part in message
    assert list((release / "cache").iterdir()) == []


def test_manifest_records_which_split_trained_and_which_validated(release, tmp_path):
    (release / "mirror" / "wikitext-2-raw-v1.zip").write_bytes(make_archive())
    result = assemble(DataConfig(sources=("wikitext2-raw",), tokenizer="char", out_dir=str(tmp_path / "out")))
    m = result.manifest
    assert m["sources"][0]["splits"] == {"train": "wikitext2-raw:train", "val": "wikitext2-raw:valid"}
    assert [(f["name"], f["split"], f["held_out"]) for f in m["sources"][0]["files"]] == [
        ("wiki.train.raw", "wikitext2-raw:train", False),
        ("wiki.valid.raw", "wikitext2-raw:valid", True),
    ]
    assert (m["documents"]["train"], m["documents"]["val"]) == (3, 3)  # cut at the ` = Title = ` lines
    tok = Tokenizer.load(result.path)
    for split, released in (("train", "train"), ("val", "valid")):
        assert set(tok.decode(load_tokens(result.path, split)).split()) == set(TEXTS[released].split())


def test_the_development_mirror_holds_tokenized_wikitext2s_valid_and_test_splits_but_not_its_train_split(mirror):
    source = resolve_source("wikitext2-valid-as-train", download=False)
    assert [(f.path, f.split, f.held_out) for f in source.files] == [
        (mirror / "wikitext-2-valid.txt", "wikitext2:valid", False),
        (mirror / "wikitext-2-test.txt", "wikitext2:test", True),
    ]
    assert [f.sha256 for f in source.files] == [s.sha256 for s in NAMED_SOURCES["wikitext2"].archive.splits[1:]]
    with pytest.raises(
        DataError,
        match=r"'wikitext2': its train split is not at hand: .*wikitext-2/wiki.train.tokens, "
        r"wikitext-2-train.txt nor wikitext-2-v1.zip.*https://wikitext.smerity.com/",
    ):
        resolve_source("wikitext2", download=False)


def test_known_train_bytes_come_from_the_split_trained_on_without_reading_it(tmp_path):
    assert sources.known_train_bytes("wikitext103-raw", 0.1) == 540_520_000  # about: no val_fraction share
    assert sources.known_train_bytes("wikitext2-valid-as-train", 0.1) == 1_121_681
    assert sources.known_train_bytes("tinyshakespeare", 0.1) == round(1_115_394 * 0.9)
    (tmp_path / "a.txt").write_text("x" * 1000)
    assert sources.known_train_bytes(str(tmp_path), 0.2) == 800
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n')
    assert sources.known_train_bytes(str(tmp_path), 0.2) is None  # the JSON around the text is not text
    assert sources.known_train_bytes("passkey:0.2", 0.1) is None
