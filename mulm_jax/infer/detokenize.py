"""A completion's text token by token: what the tokenizer gives for prompt + output beyond what it gives for the
prompt alone, cut at the first stop string, in time linear in the output's length.

A token's text depends on its neighbours (SentencePiece drops the space of the first piece it decodes; a
character may take several byte tokens), so each token is decoded after a few tokens before it and its text is
the difference: offsets into the joint decoding, as vLLM does. Each step decodes only the tokens since the last
complete text and those of the step before, never the whole output.
"""

from __future__ import annotations

from typing import Sequence

from mulm_jax.data.tokenizer import Tokenizer

CONTEXT = 5  # prompt tokens decoded before the first output token
INCOMPLETE = "\ufffd"  # what a decoder gives for the bytes of a character not finished yet


class IncrementalDecoder:
    """The text each new token adds to the decoding of prompt + output so far.

    A token that leaves the text ending in an unfinished character adds "" until a later token completes it
    (that token's text then holds the whole character); `flush` gives what is held back at the end. A prompt
    (given as ids) that ends inside a character leaves that character to the output's text.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-CONTEXT:])
        self.start = 0  # the decoded window is ids[start:]
        self.read = len(self.ids)  # ids[start:read] decode to `shown`, the part of the window already given out
        while self.read > 0 and tokenizer.decode(self.ids[: self.read]).endswith(INCOMPLETE):
            self.read -= 1
        self.shown = tokenizer.decode(self.ids[: self.read])

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._text_with(())
        if text.endswith(INCOMPLETE):
            return ""
        self._advance()
        return text

    def peek(self, token_ids: Sequence[int]) -> list[str]:
        """The text each of `token_ids` would add as the next token ("" where a character stays unfinished)."""
        texts = [self._text_with([t]) for t in token_ids]
        return ["" if t.endswith(INCOMPLETE) else t for t in texts]

    def flush(self) -> str:
        """The text held back for an unfinished character, as the tokenizer decodes it (with U+FFFD)."""
        if self.read == len(self.ids):
            return ""
        text = self._text_with(())
        self._advance()
        return text

    def _text_with(self, ids: Sequence[int]) -> str:
        """What `ids` would add after everything given out so far (held-back tokens included)."""
        return self.tokenizer.decode(self.ids[self.start :] + list(ids))[len(self.shown) :]

    def _advance(self) -> None:
        """All decoded is given out: the next window starts at the tokens given out last (their context)."""
        self.start, self.read = self.read, len(self.ids)
        self.shown = self.tokenizer.decode(self.ids[self.start :])


class StopStrings:
    """Text passed through until the first stop string, which ends it (and is not shown); the tail that could
    still grow into a stop string is held back."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.held = ""

    def push(self, text: str, final: bool = False) -> tuple[str, bool]:
        """(the text that may be shown now, whether a stop string ended the text)."""
        text, self.held = self.held + text, ""
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            return text[: min(cuts)], True
        if not final:
            hold = max(
                (k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
                default=0,
            )
            text, self.held = text[: len(text) - hold], text[len(text) - hold :]
        return text, False


class CompletionText:
    """One sequence's shown text, token by token: its incremental decoding cut at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stops: Sequence[str]):
        self.decoder = IncrementalDecoder(tokenizer, prompt_ids)
        self.stops = StopStrings(stops)
        self.pieces: list[str] = []
        self.stopped = False  # by a stop string

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, token_id: int, alternatives: Sequence[int] = (), final: bool = False) -> tuple[str, list[str], str]:
        """(the token's own text, the texts `alternatives` would have had in its place, the text shown now);
        `final`: no token follows, so nothing is held back."""
        others = self.decoder.peek(alternatives)
        own = self.decoder.add(token_id) + (self.decoder.flush() if final else "")
        return own, others, self._show(own, final)

    def stop_token(self, token_id: int, alternatives: Sequence[int] = ()) -> tuple[str, list[str], str]:
        """A stop token ends the text without joining it: (its own text and the alternatives' as `add` gives
        them, the text held back until now, shown)."""
        own, *others = self.decoder.peek([token_id, *alternatives])
        return own, others, self._show(self.decoder.flush(), final=True)

    def _show(self, text: str, final: bool) -> str:
        shown, self.stopped = self.stops.push(text, final)
        self.pieces.append(shown)
        return shown
