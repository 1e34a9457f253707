"""Cleaning: splitting text into documents, NFC, control characters, whitespace folding, length limits."""

from __future__ import annotations

from mulm_jax.data.clean import CleanOptions, clean_documents, fold, normalize, split_documents


def test_normalize_composes_to_nfc():
    text, _ = normalize("Cafe\u0301 and Zu\u0308rich", fold_whitespace=False)
    assert text == "Caf\u00e9 and Z\u00fcrich"


def test_normalize_removes_control_characters_but_keeps_tabs_and_newlines():
    text, removed = normalize("a\x00b\x1bc\td\ne\x7f\x85f\ud800", fold_whitespace=False)
    assert text == "abc\td\nef"
    assert removed["control_chars"] == 5


def test_whitespace_is_kept_as_is_without_folding():
    raw = "  two  spaces\t\n\n\n\nend  "
    assert normalize(raw, fold_whitespace=False)[0] == raw


def test_fold_whitespace_collapses_runs_trims_lines_and_blank_lines():
    assert fold("  a \t b  \n   c\n\n\n\n d  ") == "a b\nc\n\nd"
    text, removed = normalize("a   b", fold_whitespace=True)
    assert (text, removed["folded_whitespace_chars"]) == ("a b", 2)


def test_length_limits_drop_documents_and_count_each_reason():
    docs = ["ok doc", "", "   \n", "ab", "x" * 50, "fine too"]
    kept, dropped, _ = clean_documents(docs, CleanOptions(min_chars=3, max_chars=20))
    assert kept == ["ok doc", "fine too"]
    assert dropped == {"empty": 2, "too_short": 1, "too_long": 1}


def test_split_none_keeps_the_text_whole():
    assert split_documents("a\n\nb\n", "none") == ["a\n\nb\n"]


def test_split_paragraphs_cuts_at_blank_lines():
    assert split_documents("first para\nline two\n\n  \nsecond\n\n\nthird\n", "paragraphs") == [
        "first para\nline two",
        "second",
        "third\n",
    ]


def test_split_headings_cuts_before_wikitext_titles_but_not_sections():
    text = (
        " \n = Alpha = \n \n Alpha text . \n \n = = Early life = = \n \n More alpha . \n"
        " \n = Beta = \n \n Beta text . \n"
    )
    docs = split_documents(text, "headings")
    assert [d.split("\n")[0] for d in docs] == [" = Alpha = ", " = Beta = "]
    assert "= = Early life = =" in docs[0]
    assert "".join(docs) == text.removeprefix(" \n")  # only the whitespace before the first title is dropped
