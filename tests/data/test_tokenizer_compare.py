"""One text under several tokenizers: spans that index the text, characters per token, split words, BPE merges
(SentencePiece's derived from piece scores, Hugging Face's from its merge list), the specs accepted, and the
`data tokenize --compare` command."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2

from support import SP_CORPUS, sentencepiece_tokenizer
from mulm_jax.__main__ import main
from mulm_jax.data import DataError
from mulm_jax.data.tokenizer import CharTokenizer, HFTokenizer, SentencePieceTokenizer
from mulm_jax.data.tokenizer_compare import (
    ACCEPTED,
    Token,
    compare,
    load_tokenizer,
    merge_sequence,
    split_words,
    tokenize,
    tokenizer_at,
)

TEXT = "The history of the city, its bread and wine: é€ 漢字!\nEach morning"
PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece


@pytest.fixture(scope="module")
def bpe() -> SentencePieceTokenizer:
    return sentencepiece_tokenizer("bpe")


def pieces_of(tok: SentencePieceTokenizer):
    return spm.SentencePieceProcessor(model_proto=tok.model).id_to_piece


def hand_bpe_model() -> SentencePieceTokenizer:
    """A SentencePiece BPE model written by hand: `bc` scores highest, so "abcd" is built b+c, a+bc, abc+d."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, -1, -1
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", False
    pieces = [("<unk>", 0.0, PIECE.UNKNOWN)] + [(c, 0.0, PIECE.NORMAL) for c in "abcd"]
    pieces += [("bc", -0.5, PIECE.NORMAL), ("cd", -1.0, PIECE.NORMAL), ("ab", -2.0, PIECE.NORMAL)]
    pieces += [("abc", -3.0, PIECE.NORMAL), ("abcd", -4.0, PIECE.NORMAL)]
    for piece, score, kind in pieces:
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, kind
    return SentencePieceTokenizer(proto.SerializeToString(), "a hand-made model")


def hand_hf_bpe(folder) -> None:
    """A Hugging Face BPE tokenizer.json written by hand: merges ranked c+d, a+b, b+c, ab+cd; words split on
    whitespace (which no token covers)."""
    vocab = {c: i for i, c in enumerate("abcd")} | {"cd": 4, "ab": 5, "bc": 6, "abcd": 7}
    model = tokenizers.models.BPE(vocab, [("c", "d"), ("a", "b"), ("b", "c"), ("ab", "cd")])
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.save(str(folder / "tokenizer.json"))


def assert_spans_index_the_text(result, text: str) -> None:
    ends = [0] + [t.end for t in result.tokens]
    for token, previous_end in zip(result.tokens, ends):
        assert previous_end <= token.start <= token.end
        assert text[token.start : token.end] == token.text


def test_sentencepiece_bpe_merges_follow_the_piece_scores_of_a_hand_made_model():
    tok = hand_bpe_model()
    sp = spm.SentencePieceProcessor(model_proto=tok.model)
    # the model is what it says: bc before cd (b+c wins over c+d in "bcd"), and abcd one piece
    assert sp.encode(["abcd", "bcd", "cdab"], out_type=str) == [["abcd"], ["bc", "d"], ["cd", "ab"]]
    result = tokenize(tok, "abcd bcd", "hand")
    assert [(t.piece, t.text, t.start, t.end) for t in result.tokens] == [
        ("abcd", "abcd", 0, 4),
        ("<unk>", " ", 4, 5),  # the word-start mark is no piece of this model
        ("bc", "bc", 5, 7),
        ("d", "d", 7, 8),
    ]
    assert result.algorithm == "bpe" and result.vocab_size == 10
    assert result.merges == {9: [("b", "c", "bc"), ("a", "bc", "abc"), ("abc", "d", "abcd")], 5: [("b", "c", "bc")]}
    assert [(w.word, w.tokens) for w in result.split_words] == [("bcd", [2, 3])]


def test_hugging_face_bpe_merges_follow_the_merge_list_and_whitespace_is_no_token(tmp_path):
    hand_hf_bpe(tmp_path)
    tok = tokenizer_at(tmp_path)  # a folder with tokenizer.json and no tokenizer_config.json
    assert isinstance(tok, HFTokenizer)
    result = tokenize(tok, "abcd  bcd", "hand")
    assert [(t.piece, t.start, t.end) for t in result.tokens] == [("abcd", 0, 4), ("b", 6, 7), ("cd", 7, 9)]
    assert result.merges == {7: [("c", "d", "cd"), ("a", "b", "ab"), ("ab", "cd", "abcd")], 4: [("c", "d", "cd")]}
    assert result.chars_per_token == 3.0 and result.algorithm == "bpe"
    assert_spans_index_the_text(result, "abcd  bcd")
    assert [(w.word, w.start, w.end, w.tokens) for w in result.split_words] == [("bcd", 6, 9, [1, 2])]


def test_a_byte_level_bpe_covers_the_text_once_where_several_tokens_spell_one_character(tmp_path):
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = tokenizers.processors.ByteLevel(trim_offsets=True)  # trims " the" to "the"
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator([SP_CORPUS], trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    text = "in the people é漢"
    result = tokenize(tokenizer_at(tmp_path / "tokenizer.json"), text, "bytes")
    assert [(t.piece, t.text) for t in result.tokens[:3]] == [("in", "in"), ("Ġthe", " the"), ("Ġpeople", " people")]
    assert [t.id for t in result.tokens] == backend.encode(text).ids
    assert "".join(t.text for t in result.tokens) == text
    assert_spans_index_the_text(result, text)
    # é is two bytes and 漢 three, all sharing their character's offsets in the library: the first takes it
    assert [(t.piece, t.text) for t in result.tokens[-5:]] == [("Ã", "é"), ("©", ""), ("æ", "漢"), ("¼", ""), ("¢", "")]
    assert all(merges[-1][2] == backend.id_to_token(i) for i, merges in result.merges.items())


def test_merge_sequence_takes_the_leftmost_of_equal_pairs_and_gives_none_for_a_piece_it_cannot_build():
    def equal(left, right):
        return 0.0 if left + right in {"aa", "aaa"} else None

    assert merge_sequence("aaa", equal) == [("a", "a", "aa"), ("aa", "a", "aaa")]
    assert merge_sequence("ab", equal) is None
    assert merge_sequence("a", equal) == []


def test_a_trained_bpe_models_spans_round_trip_and_every_piece_is_rebuilt_from_its_characters(bpe):
    result = tokenize(bpe, TEXT, "bpe")
    assert "".join(t.text for t in result.tokens) == TEXT
    assert_spans_index_the_text(result, TEXT)
    assert [t.id for t in result.tokens] == bpe.encode(TEXT)
    assert [t.piece for t in result.tokens] == [pieces_of(bpe)(t.id) for t in result.tokens]
    assert result.chars_per_token == pytest.approx(len(TEXT) / len(bpe.encode(TEXT)))
    # é € 漢 字 are unseen: byte pieces, all but a character's last one covering nothing
    bytes_of_e = [t for t in result.tokens if t.piece in ("<0xC3>", "<0xA9>")]
    assert [(t.text, t.start) for t in bytes_of_e] == [("", TEXT.index("é")), ("é", TEXT.index("é"))]
    proto = sentencepiece_model_pb2.ModelProto.FromString(bpe.model)
    scores = {p.piece: p.score for p in proto.pieces if p.type == PIECE.NORMAL}
    for p in proto.pieces:
        if p.type == PIECE.NORMAL and len(p.piece) > 1:
            merges = merge_sequence(p.piece, lambda left, right: scores.get(left + right))
            assert merges and merges[-1][2] == p.piece, p.piece
            assert all(made in scores for _, _, made in merges)
    for i, merges in result.merges.items():
        assert merges[-1][2] == pieces_of(bpe)(i)


def test_unigram_and_the_pretrained_model_have_no_merges_and_their_spans_index_the_text(mirror):
    text = "The  history of ½ the city"  # NFKC turns ½ into 1⁄2: SentencePiece's offsets map it back
    spec = str(mirror / "sp-cc-32000.model")
    (result,) = compare([spec], text)
    assert (result.kind, result.algorithm, result.vocab_size, result.merges) == (
        "sentencepiece",
        "unigram",
        32_101,
        None,
    )
    assert_spans_index_the_text(result, text)
    assert [t.id for t in result.tokens] == load_tokenizer(spec, text).encode(text)
    unigram = tokenize(sentencepiece_tokenizer("unigram"), SP_CORPUS, "unigram")
    assert unigram.algorithm == "unigram" and unigram.merges is None
    assert "".join(t.text for t in unigram.tokens) == SP_CORPUS


def test_char_is_the_texts_own_characters_one_token_each():
    (result,) = compare(["char"], "ab ba, c")
    assert (result.kind, result.algorithm, result.vocab_size, result.chars_per_token) == ("char", "char", 5, 1.0)
    assert [t.text for t in result.tokens] == list("ab ba, c") and result.merges is None
    assert [t.id for t in result.tokens] == [2, 3, 0, 3, 2, 1, 0, 4]  # sorted: " ", ",", "a", "b", "c"
    assert [(w.word, w.tokens) for w in result.split_words] == [("ab", [0, 1]), ("ba,", [3, 4, 5])]


def test_a_word_splits_when_more_than_one_token_covers_it_and_a_leading_space_splits_none():
    text = "of é x"
    tokens = [Token(0, "▁of", "of", 0, 2), Token(1, "▁", " ", 2, 3), Token(2, "<0xC3>", "", 3, 3)]
    tokens += [Token(3, "<0xA9>", "é", 3, 4), Token(4, "▁x", " x", 4, 6)]
    assert [(w.word, w.tokens) for w in split_words(text, tokens)] == [("é", [2, 3])]


def test_a_runs_char_tokenizer_names_the_character_it_lacks(tmp_path):
    CharTokenizer(sorted("abc ")).save(tmp_path)
    with pytest.raises(DataError, match=r"run: character 'z' is not in the char vocabulary"):
        tokenize(tokenizer_at(tmp_path), "abz", "run")


def test_specs_folders_and_files_of_each_kind(bpe, tmp_path):
    version, model_file, hf = tmp_path / "version", tmp_path / "m.model", tmp_path / "hf"
    for folder in (version, hf):
        folder.mkdir()
    CharTokenizer(sorted("abc ")).save(version)  # a data set version or a run folder: tokenizer.json or .model
    model_file.write_bytes(bpe.serialize())
    hand_hf_bpe(hf)
    (hf / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    kinds = [
        (r.kind, r.algorithm)
        for r in compare([str(version), str(model_file), str(hf), str(hf / "tokenizer.json")], "abc")
    ]
    assert kinds == [("char", "char"), ("sentencepiece", "bpe"), ("hf", "bpe"), ("hf", "bpe")]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing", None, "does not exist"),
        ("empty", "folder", "holds no tokenizer"),
        ("other.json", '{"vocab": []}', "neither a char tokenizer's file"),
        ("broken.json", "{", "is not JSON"),
        ("notes.txt", "some text", "not a valid SentencePiece model"),
    ],
)
def test_a_spec_that_is_no_tokenizer_is_named_with_what_is_accepted(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as e:
        compare([str(path)], "text")
    assert message in str(e.value) and str(path) in str(e.value) and ACCEPTED in str(e.value)


def test_data_tokenize_compare_prints_each_tokenizer_side_by_side(bpe, tmp_path, capsys):
    model = bpe.save(tmp_path)
    text = "The history of the city"
    assert main(["data", "tokenize", "--compare", "char", str(model), "--text", text, "--merges"]) == 0
    out = capsys.readouterr().out
    char, sp = compare(["char", str(model)], text)
    rows = out.splitlines()
    assert rows[0] == f"{len(text)} characters"
    assert rows[2].split() == ["char", "char", "char", str(char.vocab_size), str(len(text)), "1.00", "5"]
    assert rows[3].split()[1:] == [
        "sentencepiece",
        "bpe",
        "310",
        str(len(sp.tokens)),
        f"{sp.chars_per_token:.2f}",
        str(len(sp.split_words)),
    ]
    assert "  pieces: " + "|".join(t.text.replace(" ", "␣") for t in sp.tokens) in rows
    assert "  ids:    " + " ".join(str(t.id) for t in sp.tokens) in rows
    assert "  pieces: T|h|e|␣|h|i|s|t|o|r|y|␣|o|f|␣|t|h|e|␣|c|i|t|y" in rows
    assert "  split:  The = T|h|e, history = h|i|s|t|o|r|y, of = o|f, the = t|h|e, city = c|i|t|y" in rows
    some_id, merges = next(iter(sp.merges.items()))
    steps = ", ".join(f"{a} + {b} → {c}" for a, b, c in merges)
    assert f"    {pieces_of(bpe)(some_id)} ({some_id}): {steps}" in rows


def test_data_tokenize_compare_json_and_text_file(bpe, tmp_path, capsys):
    model = bpe.save(tmp_path)
    (tmp_path / "text.txt").write_text("the city\n", encoding="utf-8")
    args = ["data", "tokenize", "--compare", str(model), "char", "--text-file", str(tmp_path / "text.txt"), "--json"]
    assert main(args) == 0
    sp, char = json.loads(capsys.readouterr().out)
    assert [t["text"] for t in char["tokens"]] == list("the city\n")
    assert [t["id"] for t in sp["tokens"]] == bpe.encode("the city\n")
    assert all(merges[-1][2] == pieces_of(bpe)(int(i)) for i, merges in sp["merges"].items())


def test_data_tokenize_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["data", "tokenize", "--compare", str(tmp_path / "none"), "--text", "x"]) == 2
    assert "does not exist: expected `char`" in capsys.readouterr().err
    assert main(["data", "tokenize", "--compare", "char", "--text-file", str(tmp_path / "none.txt")]) == 2
    assert "--text-file" in capsys.readouterr().err
