"""Beam search: with a beam for every sequence it finds what an exhaustive search finds, with one beam what greedy
decoding finds; end tokens, early stopping, compilations, the engine's beam requests and `generate --num-beams`."""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import pytest

from support import favour, loaded, tiny_model
from mulm_jax.config import ModelConfig
from mulm_jax.__main__ import main
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.infer import Engine, InferenceError, LoadedModel, SamplingParams
from mulm_jax.infer.beam import BeamSearch


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


@functools.cache
def forward(model: Any) -> Callable[..., jax.Array]:
    return jax.jit(model.apply)


def next_logp(lm: LoadedModel, prompt: list[int], seqs_BxN: np.ndarray, vocab: int) -> np.ndarray:
    """log P(next token | prompt, seq[:j]) [B, N, vocab] over the first `vocab` ids, from the whole sequences run
    without a cache: an encoder-decoder reads all but the prompt's last token as its source and starts from that
    one."""
    B, N = seqs_BxN.shape
    variables = {"params": lm.params}
    if lm.config.model.architecture == "encoder_decoder":
        src_BxS = np.tile(np.asarray([prompt[:-1]], np.int32), (B, 1))
        tgt_BxT = np.concatenate([np.full((B, 1), prompt[-1], np.int32), seqs_BxN], axis=1)
        logits_BxTxV, start = forward(lm.model)(variables, src_BxS, tgt_BxT), 0
    else:
        ids_BxT = np.concatenate([np.tile(np.asarray([prompt], np.int32), (B, 1)), seqs_BxN], axis=1)
        logits_BxTxV, start = forward(lm.model)(variables, ids_BxT), len(prompt) - 1
    return log_softmax(np.asarray(logits_BxTxV)[:, start : start + N, :vocab])


def exhaustive(lm: LoadedModel, prompt: list[int], n: int, vocab: int, end: int, alpha: float) -> dict:
    """Every hypothesis of up to n tokens after `prompt` (ended by its first `end` token, or n tokens long) and its
    score log P / ((5 + length) / 6) ** alpha, found by scoring all vocab^n sequences."""
    seqs_BxN = np.asarray(list(itertools.product(range(vocab), repeat=n)), np.int32)
    scores = {}
    logp_BxNxV = next_logp(lm, prompt, seqs_BxN, vocab)
    for seq, logp_N in zip(seqs_BxN, np.take_along_axis(logp_BxNxV, seqs_BxN[..., None], axis=-1)[..., 0]):
        length = next((j + 1 for j, token in enumerate(seq) if token == end), n)
        scores[tuple(int(t) for t in seq[:length])] = logp_N[:length].sum() / ((5 + length) / 6) ** alpha
    return scores


def greedy(lm: LoadedModel, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy tokens and their total log-probability, each step rerunning the whole sequence (padded to n tokens,
    which the causal model does not see before them, so that every step has the same shapes)."""
    V = lm.config.model.vocab_size
    tokens: list[int] = []
    logp = 0.0
    for t in range(n):
        logp_V = next_logp(lm, prompt, np.asarray([tokens + [0] * (n - t)], np.int32), V)[0, t]
        tokens.append(int(np.argmax(logp_V)))
        logp += float(logp_V[tokens[-1]])
    return tokens, logp


class Bigram(nn.Module):
    """A hand-made language model: the next token's log-probabilities are row `last token` of the `table` param;
    it keeps its caches as they are."""

    cfg: ModelConfig

    def setup(self) -> None:
        V = self.cfg.vocab_size
        self.table = self.param("table", nn.initializers.zeros, (V, V))

    @nn.nowrap
    def cache_window(self) -> None:
        return None

    @nn.nowrap
    def prompt_arrays(self, ids, pad):
        return pad(ids), np.int32(len(ids))

    @nn.nowrap
    def empty_source(self, batch: int) -> None:
        return None

    def prefill(self, ids_1xL, length, *, caches):
        return self.table[ids_1xL], caches, None

    def decode_step(self, ids_Bx1, pos_Bx1, caches, source):
        return self.table[ids_Bx1], caches


ARCHITECTURES = {
    "decoder": dict(positional="rope"),
    "encoder-decoder": dict(architecture="encoder_decoder", positional="sinusoidal"),
    "sliding-window": dict(positional="rope", attention="sliding_window", sliding_window=4),  # a ring of 4
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_beam_for_every_sequence_finds_every_hypothesis_the_exhaustive_search_scores(arch):
    # 5 tokens and 2 padded ids that would win every step if not masked (see sampling.mask_vocab); 3 new tokens,
    # token 0 ends a hypothesis. 125 beams keep every sequence, so the search must rank all 1 + 4 + 16 + 64
    # hypotheses as the exhaustive search does.
    lm = favour(loaded(vocab_size=7, tokenizer=CharTokenizer(list("abcde")), num_layers=2, **ARCHITECTURES[arch]), 5, 6)
    prompt, n, alpha = [1, 2, 3, 4], 3, 0.6
    expected = exhaustive(lm, prompt, n, vocab=5, end=0, alpha=alpha)
    result = BeamSearch(lm.model, 16, vocab=5).search(
        lm.params, prompt, num_beams=5**n, max_tokens=n, alpha=alpha, end_ids={0}
    )
    found = {h.token_ids: h for h in result.hypotheses}
    assert set(found) == set(expected) and len(found) == 85
    np.testing.assert_allclose([found[y].score for y in expected], list(expected.values()), rtol=1e-4, atol=1e-4)
    best, runner_up = sorted(expected.values(), reverse=True)[:2]
    assert best - runner_up > 1e-3  # the best is not a near-tie
    assert result.hypotheses[0].token_ids == max(expected, key=expected.get)
    assert [h.score for h in result.hypotheses] == sorted((h.score for h in result.hypotheses), reverse=True)
    for h in result.hypotheses:
        assert h.finish_reason == ("stop" if h.token_ids[-1] == 0 else "length")
        assert h.score == pytest.approx(h.logprob / ((5 + len(h.token_ids)) / 6) ** alpha, rel=1e-5)


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return loaded(num_layers=2, positional="rope", max_seq_len=64)  # prompt buckets 16, 32, 64


@pytest.fixture(scope="module")
def beams(lm) -> BeamSearch:
    return BeamSearch(lm.model, 64)


def test_one_beam_without_end_tokens_is_greedy_decoding(lm, beams):
    prompt = [5, 6, 7]
    tokens, logp = greedy(lm, prompt, 6)
    best = beams.search(lm.params, prompt, num_beams=1, max_tokens=6).hypotheses[0]
    assert list(best.token_ids) == tokens and best.finish_reason == "length"
    assert best.logprob == pytest.approx(logp, abs=1e-4)


def test_a_hypothesis_ends_at_its_end_token_and_early_stopping_only_saves_steps(lm, beams):
    # Without a length penalty a one-token hypothesis of the likeliest first token beats every longer one (P only
    # falls), so the search settles after its first step once that token ends hypotheses.
    prompt = [5, 6, 7]
    first = greedy(lm, prompt, 1)[0][0]
    early = beams.search(lm.params, prompt, num_beams=1, max_tokens=6, alpha=0.0, end_ids={first})
    full = beams.search(lm.params, prompt, num_beams=1, max_tokens=6, alpha=0.0, early_stopping=False, end_ids={first})
    assert early.hypotheses[0].token_ids == (first,) and early.hypotheses[0].finish_reason == "stop"
    assert (early.steps, full.steps) == (1, 6)
    assert early.hypotheses == full.hypotheses
    # With three beams and the paper's length penalty, stopping early or not gives the same hypotheses.
    steps = []
    for end in range(4):
        early, full = (
            beams.search(lm.params, prompt, num_beams=3, max_tokens=8, end_ids={end}, early_stopping=e)
            for e in (True, False)
        )
        assert [h.token_ids for h in early.hypotheses] == [h.token_ids for h in full.hypotheses]
        steps.append((early.steps, full.steps))
    assert all(full == 8 for _, full in steps) and any(early < 8 for early, _ in steps)


def test_the_length_penalty_prefers_a_longer_hypothesis_and_early_stopping_waits_for_it():
    # After the prompt (token 3) the end token 0 has probability 0.5 and token 1 0.4; token 1 is then followed by
    # itself with probability 0.99. Without a length penalty [0] wins: log 0.5 > log 0.4 + 7 log 0.99. With alpha 1,
    # eight tokens of 1 score (log 0.4 + 7 log 0.99) / (13 / 6) = -0.455 against log 0.5 / 1 = -0.693. After the
    # first step the live beam (log 0.4) could still reach log 0.4 / (13 / 6) = -0.423, above [0]'s -0.693, so the
    # search may not stop there: a bound taken at the next length, log 0.4 / (7 / 6), would have stopped it.
    table_VxV = np.log(
        np.asarray(
            [[0.25, 0.25, 0.25, 0.25], [0.005, 0.99, 0.004, 0.001], [0.25, 0.25, 0.25, 0.25], [0.5, 0.4, 0.09, 0.01]],
            np.float32,
        )
    )
    beams = BeamSearch(Bigram(tiny_model(vocab_size=4)), 16)
    search = functools.partial(beams.search, {"table": table_VxV}, [3], num_beams=1, max_tokens=8, end_ids={0})
    assert [(h.token_ids, h.finish_reason) for h in search(alpha=0.0).hypotheses] == [((0,), "stop")]
    for early_stopping in (True, False):
        best = search(alpha=1.0, early_stopping=early_stopping).hypotheses[0]
        assert (best.token_ids, best.finish_reason) == ((1,) * 8, "length")
        assert best.score == pytest.approx((np.log(0.4) + 7 * np.log(0.99)) / (13 / 6), rel=1e-5)


def test_beam_search_compiles_once_per_prompt_bucket_and_number_of_beams(lm):
    beams = BeamSearch(lm.model, 64)
    for prompt, settings in [
        ([1, 2, 3], dict(max_tokens=4)),
        ([4] * 9, dict(max_tokens=7, alpha=1.0, end_ids={3})),
        ([2] * 12, dict(max_tokens=2, early_stopping=False, end_ids={1, 2})),
    ]:
        beams.search(lm.params, prompt, num_beams=2, **settings)
    assert beams.compiled.compilations == 1
    beams.search(lm.params, [1] * 20, num_beams=2, max_tokens=4)  # the 32 bucket
    assert beams.compiled.compilations == 2
    beams.search(lm.params, [1, 2, 3], num_beams=3, max_tokens=4)
    assert beams.compiled.compilations == 3


def test_the_engine_runs_beam_requests_beside_sampled_ones_and_counts_their_compilation(lm, beams):
    p = SamplingParams(max_tokens=5, num_beams=3, temperature=0.9)  # beam search ignores temperature
    expected = beams.search(lm.params, lm.tokenizer.encode("hello"), num_beams=3, max_tokens=5)
    engine = Engine(lm, slots=1)
    with engine:
        sampled = [engine.submit("the", SamplingParams(max_tokens=12, seed=s)) for s in range(2)]
        result = engine.submit("hello", p).result(timeout=120)
        again = engine.generate("world", p.replace(max_tokens=3, length_penalty=1.0))
        assert all(r.result(timeout=120).completion_tokens == 12 for r in sampled)
    assert engine.stats().compilations == 3  # prefill and decode for the sampled ones, one beam search
    assert result.token_ids == expected.hypotheses[0].token_ids
    assert [h.token_ids for h in result.hypotheses] == [h.token_ids for h in expected.hypotheses]
    assert result.text == lm.tokenizer.decode(result.token_ids)
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("length", 5, 5)
    assert again.completion_tokens == 3 and again.logprobs is None


def test_an_end_token_of_the_request_ends_the_best_hypothesis_without_its_text(lm):
    first = greedy(lm, lm.tokenizer.encode("hello"), 1)[0][0]
    with Engine(lm, slots=1) as engine:
        result = engine.generate(
            "hello", SamplingParams(max_tokens=6, num_beams=2, length_penalty=0.0, stop_token_ids=(first,))
        )
    assert (result.token_ids, result.text, result.finish_reason) == ((first,), "", "stop")
    assert result.hypotheses[0].finish_reason == "stop"


def test_a_ring_cache_model_refuses_more_beam_tokens_than_its_positions():
    lm = loaded(positional="rope", attention="sliding_window", sliding_window=4)  # 16 positions
    engine = Engine(lm, slots=1)  # not started: requests only queue
    engine.submit("ab", SamplingParams(max_tokens=20))  # a ring decodes past its positions
    with pytest.raises(
        InferenceError,
        match=r"max_tokens=20 does not fit beam search's 16 positions after this "
        r"prompt: ask for at most 16 new tokens",
    ):
        engine.submit("ab", SamplingParams(max_tokens=20, num_beams=2))


def test_generate_prints_the_best_hypothesis_and_with_all_beams_each_kept(lm, beams, monkeypatch, capsys):
    monkeypatch.setattr("mulm_jax.infer.load_model", lambda checkpoint, step: lm)
    expected = beams.search(lm.params, lm.tokenizer.encode("hello"), num_beams=3, max_tokens=4, alpha=1.0)
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                "run",
                "--prompt",
                "hello",
                "--max-tokens",
                "4",
                "--num-beams",
                "3",
                "--length-penalty",
                "1.0",
                "--all-beams",
                "--no-compilation-cache",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    best, *lines = out.out.splitlines()
    assert best == lm.tokenizer.decode(expected.hypotheses[0].token_ids)
    listed = [json.loads(line) for line in lines]
    assert [h["text"] for h in listed] == [lm.tokenizer.decode(h.token_ids) for h in expected.hypotheses]
    np.testing.assert_allclose([h["score"] for h in listed], [h.score for h in expected.hypotheses], atol=1e-4)
    assert "[4 tokens, finish: length]" in out.err
