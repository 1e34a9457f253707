"""Completion text token by token: equal to decoding prompt + output minus decoding the prompt, with SentencePiece
BPE and unigram models (leading spaces, byte-fallback pieces, characters split across tokens), stop strings
across tokens; through the engine, off the thread that dispatches the steps and in time per token that does not
grow with the output."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from support import loaded, sentencepiece_tokenizer
from mulm_jax.data.tokenizer import SentencePieceTokenizer
from mulm_jax.infer import Engine, SamplingParams
from mulm_jax.infer.detokenize import CompletionText, IncrementalDecoder, StopStrings

WIDE = "東京 😀 café naïve"  # characters the tokenizers have no piece for: byte-fallback pieces


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp(request) -> SentencePieceTokenizer:
    return sentencepiece_tokenizer(request.param)


def joint_text(tok, prompt: list[int], output: list[int]) -> str:
    """The reference: the decoding of prompt + output beyond the decoding of the prompt (of its complete
    characters: a character the prompt's last tokens leave unfinished is the output's)."""
    complete = len(prompt)
    while tok.decode(prompt[:complete]).endswith("\ufffd"):
        complete -= 1
    return tok.decode(prompt + output)[len(tok.decode(prompt[:complete])) :]


def decode_incrementally(tok, prompt: list[int], output: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tok, prompt)
    texts = [decoder.add(t) for t in output]
    texts[-1] += decoder.flush()
    return texts


def test_a_completion_that_starts_a_word_keeps_its_space(sp):
    prompt, output = sp.encode("The history of"), sp.encode(" Templement and the title")[1:]  # as if generated
    assert sp.decode(output).startswith("Templement")  # decoded alone, SentencePiece drops the space
    texts = decode_incrementally(sp, prompt, output)
    assert "".join(texts) == joint_text(sp, prompt, output) == " Templement and the title"


def test_every_split_of_a_text_gives_the_joint_decoding(sp):
    ids = sp.encode("The title of the book:  " + WIDE + " was known.\nIn the morning")
    for cut in range(1, len(ids)):
        prompt, output = ids[:cut], ids[cut:]
        assert "".join(decode_incrementally(sp, prompt, output)) == joint_text(sp, prompt, output), cut


def test_random_tokens_decode_like_the_whole_at_every_complete_step(sp):
    rng = np.random.default_rng(0)
    prompt = sp.encode("The people of")
    output = rng.integers(4, sp.vocab_size, 400).tolist()  # words, pieces and stray bytes; no control ids
    decoder, shown = IncrementalDecoder(sp, prompt), ""
    for n, token in enumerate(output, 1):
        shown += decoder.add(token)
        reference = joint_text(sp, prompt, output[:n])
        if not reference.endswith("\ufffd"):  # a complete text: all of it is shown
            assert shown == reference, n
        else:
            assert reference.startswith(shown), n
    assert shown + decoder.flush() == joint_text(sp, prompt, output)


def test_a_character_split_over_byte_pieces_comes_with_its_last_byte(sp):
    prompt = sp.encode("The")
    output = sp.encode(" 東京 café")[1:]
    pieces = [sp._sp.id_to_piece(t) for t in output]
    texts = decode_incrementally(sp, prompt, output)
    assert pieces[:7] == ["▁", "<0xE6>", "<0x9D>", "<0xB1>", "<0xE4>", "<0xBA>", "<0xAC>"]
    assert texts[:7] == [" ", "", "", "東", "", "", "京"]
    assert texts[-2:] == ["", "é"] and "".join(texts) == " 東京 café"


def test_an_unfinished_character_at_the_end_is_flushed_as_the_tokenizer_decodes_it(sp):
    prompt, output = sp.encode("The"), sp.encode(" 東")[1:-1]  # the last of three bytes never comes
    decoder = IncrementalDecoder(sp, prompt)
    assert [decoder.add(t) for t in output] == [" ", "", ""]
    assert decoder.flush() == "\ufffd\ufffd"  # SentencePiece decodes each stray byte so
    assert joint_text(sp, prompt, output) == " \ufffd\ufffd"


def test_alternatives_are_decoded_in_the_place_of_the_token(sp):
    decoder = IncrementalDecoder(sp, sp.encode("The history"))
    word_start, letter = sp.encode("the")[0], sp._sp.piece_to_id("s")  # "\u2581the" or "\u2581t", and "s"
    word = " " + sp.decode([word_start])  # decoded alone, a word start loses its space
    assert decoder.peek([word_start, letter]) == [word, "s"]
    assert decoder.add(word_start) == word


@pytest.mark.parametrize(
    "pieces, stops, shown, stopped",
    [
        (["ab", "c<", "/s", ">tail"], ["</s>"], ["ab", "c", "", ""], True),  # the stop spans three pieces
        (["ab", "c<", "/x", "y"], ["</s>"], ["ab", "c", "</x", "y"], False),  # a prefix that did not become one
        (["one\n", "\nUser", ":"], ["\n\n", "User:"], ["one", "", ""], True),  # the earliest stop string wins
        (["x", "<", "/"], ["</s>"], ["x", "", ""], False),  # held back until the end, then shown
    ],
)
def test_stop_strings_across_pieces(pieces, stops, shown, stopped):
    stop = StopStrings(stops)
    got, ended = [], False
    for piece in pieces:
        text, ended = stop.push(piece)
        got.append(text)
        if ended:
            break
    assert got == shown[: len(got)] and ended == stopped
    if not stopped:
        assert stop.push("", final=True) == ("".join(pieces)[len("".join(got)) :], False)


def test_completion_text_stops_at_a_stop_string_inside_a_token(sp):
    prompt, output = sp.encode("The"), sp.encode(" history of the city")[1:]
    text = CompletionText(sp, prompt, stops=["y of t"])
    shown = []
    for token in output:
        shown.append(text.add(token)[2])
        if text.stopped:
            break
    assert text.stopped and text.text == "".join(shown) == " histor"


# ---- through the engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_engine():
    tok = sentencepiece_tokenizer("bpe")
    with Engine(loaded(tokenizer=tok, vocab_size=tok.vocab_size, max_seq_len=2048), slots=2) as engine:
        yield engine


def test_streamed_whole_and_logprob_texts_are_the_joint_decoding(sp_engine):
    tok = sp_engine.tokenizer
    prompt = tok.encode("The history of")
    for seed in range(4):  # random weights: words, stray bytes and characters split over byte pieces
        request = sp_engine.submit(prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=seed, logprobs=3))
        streamed = "".join(event.text for event in request)
        result = request.result()
        ids = list(result.token_ids[:-1] if result.finish_reason == "stop" else result.token_ids)  # not the end token
        assert result.text == streamed == joint_text(tok, prompt, ids)
        assert "".join(lp.text for lp in result.logprobs) == result.text
        for lp in result.logprobs[:-1]:  # the last one's text also holds what the end flushes
            assert all(text == lp.text for i, text, _ in lp.top if i == lp.token_id)


def test_host_time_per_token_stays_flat_over_2000_tokens(sp_engine, monkeypatch):
    tok = sp_engine.tokenizer
    decoding, stamps, threads = [0.0], [], set()

    def timed_decode(ids, decode=tok.decode):  # CPU time spent decoding, whichever thread decodes
        start = time.thread_time()
        text = decode(ids)
        decoding[0] += time.thread_time() - start
        return text

    def on_token(event):  # at each token: decoding so far, and the CPU time of the thread that delivers it
        stamps.append((decoding[0], time.thread_time()))
        threads.add(threading.current_thread().name)

    monkeypatch.setattr(tok, "decode", timed_decode)
    prompt = tok.encode("The history of")
    result = sp_engine.generate(
        prompt, SamplingParams(max_tokens=2000, temperature=1.0, seed=1, ignore_eos=True), on_token=on_token
    )
    per_token = np.diff(np.asarray(stamps), axis=0)  # [tokens - 1, (decoding, delivery)]: medians, robust
    early, late = np.median(per_token[100:400], axis=0), np.median(per_token[-300:], axis=0)
    assert late[0] < 2 * early[0] + 20e-6, (
        f"decoding per token grew from {early[0] * 1e6:.0f} to {late[0] * 1e6:.0f} us"
    )
    assert late[1] < 2 * early[1] + 50e-6, (
        f"delivery per token grew from {early[1] * 1e6:.0f} to {late[1] * 1e6:.0f} us"
    )
    assert threads == {"mulm-delivery"}  # not the thread that dispatches the steps
    assert result.text == joint_text(tok, prompt, list(result.token_ids))
