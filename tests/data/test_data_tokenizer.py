"""Tokenizers: nanoGPT characters and SentencePiece (trained or given) behind one interface; save, load, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from mulm_jax.data import DataError, Tokenizer
from mulm_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharTokenizer, SentencePieceTokenizer


def english_like(seed: int = 0, words: int = 20_000) -> list[str]:
    """Documents of lines of pseudo-words, enough text for a few hundred SentencePiece pieces."""
    letters = np.random.default_rng(0)  # one pseudo-word list for every seed
    vocab = ["".join(letters.choice(list("etaoinshrdlucmfwyp"), letters.integers(2, 8))) for _ in range(60)]
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(vocab, 12)).capitalize() + "." for _ in range(words // 12)]
    return ["\n".join(lines[i : i + 50]) for i in range(0, len(lines), 50)]


@pytest.fixture(scope="module")
def bpe() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(english_like(), "bpe", 400)


def test_char_vocabulary_is_the_sorted_distinct_training_characters():
    tok = CharTokenizer.train(["hello world"])
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert (tok.eos_id, tok.unk_id) == (None, None)


def test_char_round_trips_any_text_of_its_characters():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\tÄ ☃ 漢"
    tok = CharTokenizer.train([text])
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = "".join(rng.choice(list(text), rng.integers(0, 200)))
        assert tok.decode(tok.encode(sample)) == sample


def test_char_adds_eos_only_when_documents_are_joined():
    assert CharTokenizer.train(["ab"], ["ba"]).eos_id is None
    joined = CharTokenizer.train(["ab", "ba"], ["ab"])
    assert (joined.eos_id, joined.vocab_size) == (2, 3)
    assert joined.decode([0, 2, 1]) == "ab"


def test_char_maps_characters_unseen_in_training_to_unk_when_val_has_them():
    tok = CharTokenizer.train(["abc"], ["abz"])
    assert (tok.unk_id, tok.vocab_size) == (3, 4)
    assert tok.encode("azc") == [0, 3, 2]
    assert tok.decode(tok.encode("azc")) == "a\ufffdc"


def test_char_without_unk_rejects_an_unseen_character_by_name():
    with pytest.raises(DataError, match=r"character 'z' is not in the char vocabulary of 3 characters"):
        CharTokenizer.train(["abc"]).encode("abz")


def test_char_tokenizer_saves_and_loads_unchanged(tmp_path):
    tok = CharTokenizer.train(["héllo\n", "wörld"], ["xyz"])
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.describe() == tok.describe()
    assert loaded.encode("wörld\nxyz") == tok.encode("wörld\nxyz")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_trains_to_the_vocab_size_with_fixed_special_ids(model_type):
    tok = SentencePieceTokenizer.train(english_like(), model_type, 400)
    assert tok.vocab_size == 400
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    text = english_like(seed=1)[0]
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < 0.75 * len(text)  # it learned multi-character pieces


def test_sentencepiece_round_trips_unseen_characters_and_whitespace_through_byte_fallback(bpe):
    text = "  Zürich 漢字 🎉\n\n\ttabs  and  spaces \n"
    ids = bpe.encode(text)
    assert bpe.unk_id not in ids
    assert bpe.decode(ids) == text


def test_sentencepiece_training_is_deterministic(bpe):
    assert SentencePieceTokenizer.train(english_like(), "bpe", 400).serialize() == bpe.serialize()


def test_vocab_size_too_large_for_the_corpus_names_the_size():
    with pytest.raises(DataError, match=r"vocab_size=5000 is too large for this corpus: .* at most \d+ pieces"):
        SentencePieceTokenizer.train(["a tiny corpus"], "bpe", 5000)


def test_sentencepiece_tokenizer_saves_and_loads_from_folder_and_file(bpe, tmp_path):
    path = bpe.save(tmp_path)
    for source in (tmp_path, path):
        loaded = Tokenizer.load(source)
        assert loaded.serialize() == bpe.serialize()
        assert loaded.encode("Hello there.") == bpe.encode("Hello there.")


def test_corrupt_model_file_is_rejected_by_name(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"broken.model is not a valid SentencePiece model"):
        Tokenizer.load(path)


def test_folder_without_a_tokenizer_is_an_error(tmp_path):
    with pytest.raises(DataError, match="holds no tokenizer"):
        Tokenizer.load(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.model")


def test_pretrained_sentencepiece_model_loads_with_its_own_ids(mirror):
    tok = Tokenizer.load(mirror / "sp-cc-32000.model")
    assert tok.vocab_size == 32_100 + 1
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    text = "The quick brown fox jumps over the lazy dog."
    assert tok.decode(tok.encode(text)) == text


def text_lengths(tok: Tokenizer, ids: np.ndarray) -> tuple[int, int] | None:
    """(bytes, characters) of the text of `ids`, which starts with the first of them."""
    return tok.token_lengths().count(ids, np.r_[-1, ids[:-1]])


DOCUMENTS = ["Où est le café? Il est là.", " une espace devant,\n  deux ensuite 中文\n", "\tthé 🎉 漢字"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_token_lengths_sum_to_the_utf8_bytes_and_characters_of_the_text(kind, bpe):
    tok = CharTokenizer.train(DOCUMENTS) if kind == "char" else bpe
    for doc in DOCUMENTS:
        ids = tok.encode_array(doc)
        assert text_lengths(tok, ids) == (len(doc.encode()), len(doc))
    packed = np.concatenate([part for ids in tok.encode_documents(DOCUMENTS) for part in ([tok.eos_id], ids)][1:])
    # the eos ids between documents add nothing; each document's first piece has no dummy-prefix space
    assert text_lengths(tok, packed) == (sum(len(d.encode()) for d in DOCUMENTS), sum(map(len, DOCUMENTS)))


def test_sentencepiece_token_lengths_count_the_mark_as_a_space_and_byte_pieces_as_one_byte(bpe):
    lengths = bpe.token_lengths()
    byte_e9, byte_c3 = (bpe._sp.piece_to_id(p) for p in ("<0xA9>", "<0xC3>"))  # é is C3 A9 in UTF-8
    word = next(
        i
        for i in range(bpe.vocab_size)
        if bpe._sp.id_to_piece(i).startswith("\u2581") and len(bpe._sp.id_to_piece(i)) > 2
    )
    assert (lengths.bytes_V[byte_c3], lengths.chars_V[byte_c3]) == (1, 1)  # a character starts here ...
    assert (lengths.bytes_V[byte_e9], lengths.chars_V[byte_e9]) == (1, 0)  # ... and goes on
    assert lengths.bytes_V[word] == len(bpe._sp.id_to_piece(word).encode()) - 2  # "▁" is 3 bytes, a space 1
    assert [lengths.bytes_V[i] for i in (PAD_ID, BOS_ID, EOS_ID, UNK_ID)] == [0, 0, 0, -1]


def test_text_with_an_unknown_character_has_no_length():
    tok = CharTokenizer.train(["abc"], ["abz"])
    assert text_lengths(tok, np.array(tok.encode("abz"))) is None
    assert text_lengths(tok, np.array(tok.encode("cab"))) == (3, 3)
