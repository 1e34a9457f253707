"""Assembly: versioned, reproducible data sets with manifests; the named corpora; every user error, leaving nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mulm_jax.config import DataConfig
from mulm_jax.data import DataError, Tokenizer, assemble, list_versions, load_tokens, prepare_dataset
from mulm_jax.data.tokenizer import SentencePieceTokenizer


def random_docs(n: int, seed: int = 0, words: int = 80) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab, words)) + "\n" for _ in range(n)]


def write_folder(folder: Path, docs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(doc)
    return folder


def config(tmp_path: Path, *sources: Path | str, **settings) -> DataConfig:
    return DataConfig(sources=tuple(map(str, sources)), out_dir=str(tmp_path / "out"), **settings)


def assert_nothing_written(out: Path) -> None:
    """No version folder and no temporary folder (the output folder itself may not exist at all)."""
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_folder(tmp_path / "corpus", random_docs(20))


def test_tinyshakespeare_char_matches_nanogpt(mirror, tmp_path):
    result = assemble(config(tmp_path, "tinyshakespeare", tokenizer="char"))
    m = result.manifest
    assert (m["vocab_size"], m["train_tokens"], m["val_tokens"], m["dtype"]) == (65, 1_003_854, 111_540, "uint16")
    text = (mirror / "tinyshakespeare.txt").read_text()
    tok = Tokenizer.load(result.path)
    assert tok.chars == sorted(set(text))
    assert tok.decode(load_tokens(result.path, "train")[:2000]) == text[:2000]
    assert tok.decode(load_tokens(result.path, "val")) == text[1_003_854:]


def test_wikitext2_valid_as_train_bpe_8000_trains_on_valid_and_holds_out_test(mirror, tmp_path):
    result = assemble(config(tmp_path, "wikitext2-valid-as-train", tokenizer="bpe", vocab_size=8000))
    m = result.manifest
    assert m["sources"][0]["splits"] == {"train": "wikitext2:valid", "val": "wikitext2:test"}
    assert (m["vocab_size"], m["tokenizer"]["kind"], m["tokenizer"]["eos_id"]) == (8000, "bpe", 3)
    assert (m["documents"]["train"], m["documents"]["val"]) == (60, 62)
    assert [f["sha256"][:8] for f in m["sources"][0]["files"]] == ["f0737ed3", "d790b833"]
    val = load_tokens(result.path, "val")
    assert Tokenizer.load(result.path).decode(val[:20]).startswith(" = Robert <unk> = ")
    assert (val == 3).sum() == 62 - 1  # documents joined with eos


def test_pretrained_sentencepiece_model_tokenizes_tinyshakespeare(mirror, tmp_path):
    result = assemble(config(tmp_path, "tinyshakespeare", tokenizer=str(mirror / "sp-cc-32000.model")))
    m = result.manifest
    assert (m["vocab_size"], m["dtype"], m["tokenizer"]["kind"]) == (32_101, "uint16", "sentencepiece_model")
    assert 200_000 < m["train_tokens"] < 400_000
    assert Tokenizer.load(result.path).decode(load_tokens(result.path, "train")[:6]).startswith("First Citizen")


def test_repeated_assembly_reuses_the_version_folder(corpus, tmp_path):
    first = assemble(config(tmp_path, corpus))
    stamp = (first.path / "train.bin").stat().st_mtime_ns
    second = assemble(config(tmp_path, corpus))
    assert (first.reused, second.reused) == (False, True)
    assert second.path == first.path and second.manifest == first.manifest
    assert (second.path / "train.bin").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [first.manifest["version"]]


def test_version_and_contents_depend_on_file_contents_not_paths(corpus, tmp_path):
    first = assemble(config(tmp_path, corpus))
    moved = shutil.copytree(corpus, tmp_path / "elsewhere" / "copy")
    second = assemble(DataConfig(sources=(str(moved),), out_dir=str(tmp_path / "other_out")))
    assert second.manifest["version"] == first.manifest["version"]
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (second.path / name).read_bytes() == (first.path / name).read_bytes()


def test_changed_input_or_setting_gives_a_new_version_beside_the_old(corpus, tmp_path):
    base = assemble(config(tmp_path, corpus)).manifest["version"]
    setting = assemble(config(tmp_path, corpus, val_fraction=0.2)).manifest["version"]
    (corpus / "doc000.txt").write_text("changed text\n")
    content = assemble(config(tmp_path, corpus)).manifest["version"]
    assert len({base, setting, content}) == 3
    assert [m["version"] for m in list_versions(tmp_path / "out")] == sorted([base, setting, content])


def test_manifest_counts_what_cleaning_and_dedup_removed_and_why(tmp_path):
    docs = random_docs(20)
    near = docs[5].replace(docs[5].split()[40], "EDITED", 1)
    extra = [docs[3].replace(" ", "  "), near, " \n\t\n", "too short", "with\x00control\x07 chars " + docs[7][:60]]
    source = write_folder(tmp_path / "c", docs + extra)
    m = assemble(config(tmp_path, source, min_doc_chars=20)).manifest
    assert m["documents"]["removed"] == {"empty": 1, "too_short": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert m["documents"]["read"] == 25
    assert m["documents"]["train"] + m["documents"]["val"] == 21
    assert m["characters"]["control_chars"] == 2
    assert m["settings"]["min_doc_chars"] == 20 and m["sources"][0]["files"][0]["name"] == "doc000.txt"


def test_val_split_is_a_content_chosen_share_of_documents(tmp_path):
    docs = random_docs(40)
    forward = assemble(config(tmp_path, write_folder(tmp_path / "a", docs), tokenizer="char")).path
    backward = assemble(config(tmp_path, write_folder(tmp_path / "b", docs[::-1]), tokenizer="char")).path
    tok = Tokenizer.load(forward)
    val_docs = [
        set(tok.decode(load_tokens(p, "val")[load_tokens(p, "val") != tok.eos_id]).split("\n"))
        for p in (forward, backward)
    ]
    assert len(val_docs[0] - {""}) == 4  # round(0.1 * 40) documents
    assert val_docs[0] == val_docs[1]  # the same documents, whatever their order


def test_documents_are_joined_with_eos_into_uint16_arrays(tmp_path):
    docs = ["abc\n", "bca\n", "cab\n", "aab\n", "bba\n"]
    result = assemble(config(tmp_path, write_folder(tmp_path / "c", docs), tokenizer="char", val_fraction=0.2))
    m = result.manifest
    eos = m["tokenizer"]["eos_id"]
    train = load_tokens(result.path, "train")
    assert (eos, m["vocab_size"], train.dtype) == (4, 5, np.uint16)  # "\n", a, b, c, then eos
    assert m["train_tokens"] == 4 * 4 + 3 and (train == eos).sum() == 3
    assert (result.path / "train.bin").stat().st_size == 2 * m["train_tokens"]
    assert isinstance(train, np.memmap)


@pytest.mark.parametrize("tokenizer, vocab_size", [("char", None), ("bpe", 320)])
def test_manifest_bytes_are_the_utf8_bytes_of_each_splits_documents(tmp_path, tokenizer, vocab_size):
    docs = [d.replace("w1", "é").replace("w2", "中") for d in random_docs(20)]
    result = assemble(config(tmp_path, write_folder(tmp_path / "c", docs), tokenizer=tokenizer, vocab_size=vocab_size))
    m, tok = result.manifest, Tokenizer.load(result.path)
    for split in ("train", "val"):
        ids = load_tokens(result.path, split).astype(np.int64)
        texts = [tok.decode(part) for part in np.split(ids, np.flatnonzero(ids == tok.eos_id))]
        assert set(texts) <= set(docs) and len(texts) == m["documents"][split]
        assert m[f"{split}_bytes"] == sum(len(t.encode()) for t in texts) > m[f"{split}_chars"]
        # the tokenizer's lengths of the split's ids add up to the same text
        assert tok.token_lengths().count(ids, np.r_[-1, ids[:-1]]) == (m[f"{split}_bytes"], m[f"{split}_chars"])


def test_given_sentencepiece_model_is_used_as_is_and_versioned_by_content(corpus, tmp_path):
    model = SentencePieceTokenizer.train([d * 3 for d in random_docs(30, seed=1)], "bpe", 300).save(tmp_path)
    first = assemble(config(tmp_path, corpus, tokenizer=str(model)))
    copy = shutil.copy(model, tmp_path / "renamed.model")
    second = assemble(config(tmp_path, corpus, tokenizer=str(copy)))
    assert second.reused and second.path == first.path
    assert first.manifest["tokenizer"]["kind"] == "sentencepiece_model"
    assert (first.path / "tokenizer.model").read_bytes() == Path(model).read_bytes()


def test_prepare_dataset_assembles_once_or_returns_the_given_folder(corpus, tmp_path):
    folder = prepare_dataset(config(tmp_path, corpus))
    assert prepare_dataset(config(tmp_path, corpus)) == folder
    assert prepare_dataset(DataConfig(dataset=str(folder))) == folder
    with pytest.raises(DataError, match="is not a data set version folder"):
        prepare_dataset(DataConfig(dataset=str(tmp_path)))
    with pytest.raises(DataError, match="set data.dataset .* or data.sources"):
        prepare_dataset(DataConfig())


def test_missing_source_is_an_error_that_writes_nothing(tmp_path):
    with pytest.raises(DataError, match=r"source '.*nothing_here.txt' not found"):
        assemble(config(tmp_path, tmp_path / "nothing_here.txt"))
    assert_nothing_written(tmp_path / "out")


def test_empty_corpus_after_cleaning_is_an_error_that_writes_nothing(tmp_path):
    source = write_folder(tmp_path / "c", ["short\n", "tiny\n", "   \n"])
    with pytest.raises(DataError, match=r"no documents left for training .* read 3 .*'too_short': 2"):
        assemble(config(tmp_path, source, min_doc_chars=100))
    assert_nothing_written(tmp_path / "out")


def test_vocab_size_too_large_is_an_error_that_writes_nothing(corpus, tmp_path):
    with pytest.raises(DataError, match=r"vocab_size=50000 is too large for this corpus"):
        assemble(config(tmp_path, corpus, tokenizer="bpe", vocab_size=50_000))
    assert_nothing_written(tmp_path / "out")


def test_corrupt_tokenizer_file_is_an_error_that_writes_nothing(corpus, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(DataError, match=r"bad.model is not a valid SentencePiece model"):
        assemble(config(tmp_path, corpus, tokenizer=str(bad)))
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "tokenizer, message",
    [
        ("wordpiece", r"unknown tokenizer 'wordpiece': expected char, bpe, unigram or the path"),
        ("missing/tok.model", r"tokenizer file 'missing/tok.model' does not exist"),
    ],
)
def test_unknown_tokenizer_is_an_error_that_writes_nothing(corpus, tmp_path, tokenizer, message):
    with pytest.raises(DataError, match=message):
        assemble(config(tmp_path, corpus, tokenizer=tokenizer))
    assert_nothing_written(tmp_path / "out")


def test_unwritable_output_folder_is_an_error(corpus, tmp_path):
    (tmp_path / "afile").write_text("a file where a folder should be")
    out = tmp_path / "afile" / "sub"
    with pytest.raises(DataError, match=r"output folder '.*afile/sub' cannot be created: '.*afile' is not a folder"):
        assemble(DataConfig(sources=(str(corpus),), out_dir=str(out)))


def test_failure_while_writing_leaves_no_partial_version_folder(corpus, tmp_path, monkeypatch):
    def disk_full(self, folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Tokenizer, "save", disk_full)
    with pytest.raises(DataError, match=r"cannot write data set .*No space left on device"):
        assemble(config(tmp_path, corpus))
    assert_nothing_written(tmp_path / "out")


def test_seq_len_longer_than_a_split_is_an_error(tmp_path):
    source = write_folder(tmp_path / "c", ["abcdefghij" * 5])
    with pytest.raises(DataError, match=r"the val split has 5 tokens, too few for one window of seq_len \+ 1 = 9"):
        assemble(config(tmp_path, source, seq_len=8))
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(val_fraction=1.0), r"val_fraction=1.0 must be in \[0, 1\)"),
        (dict(tokenizer="bpe"), r"tokenizer 'bpe' needs vocab_size"),
        (dict(vocab_size=100), r"vocab_size=100 applies only to the bpe and unigram tokenizers"),
        (dict(near_dup_threshold=0.0), r"near_dup_threshold=0.0 must be in \(0, 1\]"),
        (dict(min_doc_chars=10, max_doc_chars=5), r"max_doc_chars=5 is below min_doc_chars=10"),
    ],
)
def test_impossible_settings_are_errors_naming_the_value(corpus, tmp_path, settings, message):
    with pytest.raises(DataError, match=message):
        assemble(config(tmp_path, corpus, **settings))


def test_list_versions_of_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_versions(tmp_path / "nope")


def test_manifest_file_is_sorted_json_of_the_returned_manifest(corpus, tmp_path):
    result = assemble(config(tmp_path, corpus))
    text = (result.path / "manifest.json").read_text()
    assert json.loads(text) == result.manifest
    assert text == json.dumps(result.manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
