"""Turning raw text into clean documents: splitting, Unicode NFC, control characters, whitespace, length limits."""

from __future__ import annotations

import re
import typing
import unicodedata
from collections import Counter
from dataclasses import dataclass

from mulm_jax.config import SplitMode

SPLIT_MODES: tuple[str, ...] = typing.get_args(SplitMode)

# C0 / C1 control characters other than tab and newline, and lone surrogates (invalid in any encoding).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_WIKITEXT_TITLE = re.compile(r"^(?= = [^=\n].* = *$)", re.MULTILINE)  # ` = Title = `, not ` = = Section = = `
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleanOptions:
    fold_whitespace: bool = False
    min_chars: int = 1
    max_chars: int | None = None


def split_documents(text: str, mode: SplitMode) -> list[str]:
    """Cut one long text into documents: `none` (keep whole), blank-line `paragraphs`, or WikiText ` = Title = `
    `headings`; pieces that are only whitespace are dropped."""
    if mode == "none":
        pieces = [text]
    elif mode == "paragraphs":
        pieces = _PARAGRAPH_BREAK.split(text)
    elif mode == "headings":
        pieces = _WIKITEXT_TITLE.split(text)
    else:
        raise ValueError(f"split mode {mode!r}: expected one of {', '.join(SPLIT_MODES)}")
    return [p for p in pieces if p.strip()] if len(pieces) > 1 else pieces


def normalize(text: str, fold_whitespace: bool) -> tuple[str, Counter]:
    """NFC, without control characters, optionally with whitespace folded; and how many characters each step removed."""
    removed: Counter = Counter()
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text, removed["control_chars"] = _CONTROL.subn("", text)
    if fold_whitespace:
        folded = fold(text)
        removed["folded_whitespace_chars"] = len(text) - len(folded)
        text = folded
    return text, removed


def fold(text: str) -> str:
    """Runs of spaces and tabs become one space, lines lose surrounding spaces, at most one blank line in a row."""
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def rejection(text: str, options: CleanOptions) -> str | None:
    """Why a cleaned document is dropped (`empty`, `too_short`, `too_long`), or None to keep it."""
    if not text.strip():
        return "empty"
    if len(text) < options.min_chars:
        return "too_short"
    if options.max_chars is not None and len(text) > options.max_chars:
        return "too_long"
    return None


def clean_documents(docs: list[str], options: CleanOptions) -> tuple[list[str], Counter, Counter]:
    """The documents that survive cleaning, cleaned; counts of dropped documents by reason and of removed
    characters by kind."""
    kept: list[str] = []
    dropped: Counter = Counter()
    chars: Counter = Counter()
    for doc in docs:
        text, removed = normalize(doc, options.fold_whitespace)
        chars.update(removed)
        reason = rejection(text, options)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(text)
    return kept, dropped, chars
