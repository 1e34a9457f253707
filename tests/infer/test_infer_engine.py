"""Inference: cached decoding equals re-running the whole sequence, for every variant; the engine's slots,
stops, seeds, cancellation, queue bound and compilations; int8 weights; loading a trained run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import ALPHABET, favour, loaded, tiny_model
from mulm_jax.config import Config, dump_config
from mulm_jax.infer import Engine, InferenceError, LoadedModel, QueueFullError, SamplingParams
from mulm_jax.infer.quantize import Int8Weight, dequantize, quantize_params, weight_bytes


def naive_greedy(
    lm: LoadedModel, prompt: list[int], n: int, penalties: SamplingParams = SamplingParams()
) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probabilities from re-running the whole sequence, no cache; `penalties`' repetition,
    presence and frequency penalties applied in numpy, from their definitions, to the logits each token is chosen by.

    The sequence is padded to the context so that one compilation serves every length (the model is causal:
    the padding after a position does not change its logits)."""
    T = lm.config.model.max_seq_len
    params = {"params": lm.params}
    if lm.config.model.architecture == "encoder_decoder":  # source: all but the last prompt token
        src = jnp.asarray([prompt[:-1]], jnp.int32)
        apply = jax.jit(lambda ids: lm.model.apply(params, src, ids))
        seq = prompt[-1:]
    else:
        apply = jax.jit(lambda ids: lm.model.apply(params, ids))
        seq = list(prompt)
    start = len(seq)
    logprobs = []
    for _ in range(n):
        padded = np.zeros((1, T), np.int32)
        padded[0, : len(seq)] = seq
        logits = np.asarray(apply(jnp.asarray(padded)))[0, len(seq) - 1]
        logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        seq.append(int(np.argmax(penalized(logits, prompt, seq[start:], penalties))))
        logprobs.append(float(logp[seq[-1]]))
    return seq[start:], logprobs


def penalized(logits_V: np.ndarray, prompt: list[int], output: list[int], p: SamplingParams) -> np.ndarray:
    """The repetition penalty (CTRL's) on every token of the prompt or the output, then OpenAI's presence and
    frequency penalties on the output's tokens."""
    counts_V = np.bincount(output, minlength=len(logits_V)).astype(np.float32)
    seen_V = np.isin(np.arange(len(logits_V)), prompt) | (counts_V > 0)
    r = p.repetition_penalty
    logits_V = np.where(seen_V, np.where(logits_V > 0, logits_V / r, logits_V * r), logits_V)
    return logits_V - p.presence_penalty * (counts_V > 0) - p.frequency_penalty * counts_V


def assert_greedy_decoding_equals_rerunning(lm: LoadedModel, prompts: list[list[int]], n: int) -> None:
    """The prompts decoded together in an engine (one slot each) give naive_greedy's tokens and logprobs."""
    with Engine(lm, slots=len(prompts)) as engine:
        requests = [engine.submit(p, SamplingParams(max_tokens=n, temperature=0.0, logprobs=0)) for p in prompts]
        results = [r.result(timeout=120) for r in requests]
    for prompt, result in zip(prompts, results):
        tokens, logprobs = naive_greedy(lm, prompt, n)
        assert list(result.token_ids) == tokens
        np.testing.assert_allclose([lp.logprob for lp in result.logprobs], logprobs, atol=1e-4)


VARIANTS = {
    "learned": dict(positional="learned"),
    "sinusoidal": dict(positional="sinusoidal"),
    "rope-gqa": dict(positional="rope", num_kv_heads=2),
    "rope-mqa-yarn": dict(
        positional="rope", num_kv_heads=1, rope_scaling={"type": "yarn", "factor": 2.0, "original_max_seq_len": 8}
    ),
    "alibi": dict(positional="alibi"),
    "sliding-window": dict(positional="rope", attention="sliding_window", sliding_window=4),
    "block-sparse": dict(positional="none", attention="block_sparse", block_size=4, num_global_tokens=2),
    "post-norm-rmsnorm-swiglu": dict(norm_position="post", norm="rmsnorm", ffn="swiglu"),
    "encoder-decoder": dict(architecture="encoder_decoder", positional="sinusoidal"),
}
# Each variant compiles an engine (8 s): the fast suite keeps one per kind of cache and position (a table, RoPE with
# grouped heads, a bias, the encoder-decoder's cross-attention); `make test-slow` (and CI) runs the rest too.
FAST_VARIANTS = ("learned", "rope-gqa", "alibi", "encoder-decoder")


@pytest.mark.parametrize(
    "variant", [v if v in FAST_VARIANTS else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS]
)
def test_cached_greedy_decoding_equals_rerunning_the_whole_sequence(variant):
    lm = loaded(num_layers=2, **VARIANTS[variant])
    prompts = [[1, 2, 3, 4, 5], [7, 3, 9]]
    assert_greedy_decoding_equals_rerunning(lm, prompts, 8)


def test_decoding_across_cache_chunks_equals_rerunning_the_whole_sequence():
    # A 256-position context is two chunks of cached attention; one sequence crosses from the first into the
    # second while the other stays in the first.
    lm = loaded(num_layers=1, positional="rope", num_kv_heads=2, max_seq_len=256)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 32, 120).tolist(), rng.integers(0, 32, 20).tolist()]
    assert_greedy_decoding_equals_rerunning(lm, prompts, 16)


def test_a_sequence_that_fills_the_context_leaves_its_slot_clean_for_the_next():
    # Warm-up prefills a context-long prompt and decodes past it; a request then fills the context exactly while
    # the engine runs a step ahead. A learned position table gives NaN past its end: none may reach the slot,
    # whose next short prompt leaves the far cache entries (masked, but read: 0 * NaN) as they were.
    lm = loaded(positional="learned", max_seq_len=32)  # prompt buckets 16 and 32
    greedy = SamplingParams(temperature=0.0, logprobs=0)
    engine = Engine(lm, slots=1)
    engine.warmup()
    short = [7, 3, 9, 4]
    tokens, logprobs = naive_greedy(lm, short, 8)
    with engine:
        after_warmup = engine.generate(short, greedy.replace(max_tokens=8))
        engine.generate([1, 2, 3], greedy.replace(max_tokens=29))
        after_full = engine.generate(short, greedy.replace(max_tokens=8))
    for result in (after_warmup, after_full):
        assert list(result.token_ids) == tokens
        np.testing.assert_allclose([lp.logprob for lp in result.logprobs], logprobs, atol=1e-4)


@pytest.fixture(scope="module")
def engine():
    with Engine(loaded(num_layers=1), slots=2, max_queue=4) as e:
        yield e


def test_same_seed_same_text_in_any_slot_and_company(engine):
    p = SamplingParams(max_tokens=10, temperature=1.0, top_k=8, seed=123)
    alone = engine.generate("hello", p).text
    together = [
        engine.submit(prompt, p.replace(seed=seed)) for prompt, seed in [("other", 5), ("hello", 123), ("third", 9)]
    ]
    texts = [r.result(timeout=60).text for r in together]
    assert texts[1] == alone
    assert texts[0] != alone


def test_stop_string_ends_the_text_before_it(engine):
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    full = engine.generate("abc", greedy).text
    stop = full[3:5]
    result = engine.generate("abc", greedy.replace(stop=(stop,)))
    assert result.finish_reason == "stop"
    assert result.text == full[: full.find(stop)]
    streamed = "".join(event.text for event in engine.submit("abc", greedy.replace(stop=(stop,))))
    assert streamed == result.text


def test_stop_token_and_max_tokens(engine):
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    full = engine.generate("abc", greedy)
    assert full.finish_reason == "length" and full.completion_tokens == 6
    ids = full.token_ids
    first = next((i for i in range(1, len(ids)) if ids[i] not in ids[:i]), 0)  # a token's first appearance
    stopped = engine.generate("abc", greedy.replace(stop_token_ids=(ids[first],)))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == ids[: first + 1]
    assert stopped.text == engine.tokenizer.decode(ids[:first])


def test_more_requests_than_slots_all_finish_through_reused_slots(engine):
    greedy = SamplingParams(max_tokens=5, temperature=0.0)
    prompts = ["a", "bb", "ccc", "dddd"]
    alone = [engine.generate(p, greedy).token_ids for p in prompts]
    requests = [engine.submit(p, greedy) for p in prompts]
    assert [r.result(timeout=60).token_ids for r in requests] == alone


def test_the_end_token_stops_generation_unless_ignore_eos():
    lm = loaded(num_layers=1, max_seq_len=32)
    prompt = lm.tokenizer.encode("abc")
    ids, _ = naive_greedy(lm, prompt, 12)
    first = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # a token's first appearance, not the first
    lm.tokenizer.eos_id = ids[first]  # a tokenizer whose end-of-text token is that one
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    with Engine(lm, slots=1) as engine:
        stopped, ignored = engine.generate(prompt, greedy), engine.generate(prompt, greedy.replace(ignore_eos=True))
    assert stopped.finish_reason == "stop" and list(stopped.token_ids) == ids[: first + 1]
    assert stopped.text == lm.tokenizer.decode(ids[:first])  # the end token's text is not part of the completion
    assert ignored.finish_reason == "length" and list(ignored.token_ids) == ids


def test_cancel_ends_a_running_generation_within_a_step_and_a_waiting_one_at_once():
    engine = Engine(loaded(num_layers=1, max_seq_len=128), slots=1)
    at_cancel = []

    def cancel_at_first_token(event):
        running.cancel()
        at_cancel.append(len(running.token_ids))  # read after cancel(): the loop may accept one more, no further

    long = SamplingParams(max_tokens=120, temperature=0.0)
    running = engine.submit("x", long, on_token=cancel_at_first_token)  # submitted before start: `running` is set
    waiting = engine.submit("y", long)
    waiting.cancel()
    with engine:
        first, second = running.result(timeout=120), waiting.result(timeout=120)
        assert engine.generate("z", SamplingParams(max_tokens=3, temperature=0.0)).completion_tokens == 3
        assert engine.stats().active == 0
    assert first.finish_reason == "cancelled" and len(running.token_ids) <= at_cancel[0] + 1 < long.max_tokens
    assert first.token_ids == tuple(running.token_ids[: len(first.token_ids)])
    assert second.finish_reason == "cancelled" and second.token_ids == () and waiting.token_ids == []


def test_penalties_follow_each_requests_prompt_and_output_in_its_slot():
    # Greedy decoding with penalties against the full forward pass penalized in numpy: the repetition penalty reaches
    # the prompt's tokens and the output's, presence and frequency the output's counts; the third request takes a
    # slot another held, whose prompt and counts must not carry over.
    lm = loaded(num_layers=1, max_seq_len=32)
    asks = [
        ([1, 2, 3, 1, 2, 3], SamplingParams(repetition_penalty=3.0)),
        ([5, 5, 5, 9], SamplingParams(presence_penalty=2.0, frequency_penalty=1.0)),
        ([7, 8], SamplingParams(repetition_penalty=3.0, frequency_penalty=0.5)),
    ]
    with Engine(lm, slots=2) as engine:
        requests = [engine.submit(prompt, p.replace(max_tokens=12, temperature=0.0)) for prompt, p in asks]
        results = [r.result(timeout=120) for r in requests]
    for (prompt, p), result in zip(asks, results):
        want, _ = naive_greedy(lm, prompt, 12, p)
        assert list(result.token_ids) == want
        assert want != naive_greedy(lm, prompt, 12)[0]  # the penalties changed the text: the check has teeth


def test_prompts_longer_than_the_context_are_refused_or_truncated(engine):
    with pytest.raises(
        InferenceError,
        match="the prompt has 14 tokens and max_tokens is 4: together they exceed the context of 16 tokens",
    ):
        engine.submit("a" * 14, SamplingParams(max_tokens=4))
    result = engine.generate("a" * 14, SamplingParams(max_tokens=4, temperature=0.0), truncate=True)
    assert result.prompt_tokens == 12 and result.completion_tokens == 4


def test_a_full_queue_refuses_more():
    with pytest.raises(QueueFullError, match=r"1 requests are already waiting \(max_queue=1\)"):
        engine = Engine(loaded(), slots=1, max_queue=1)  # not started: nothing leaves the queue
        engine.submit("a", SamplingParams(max_tokens=2))
        engine.submit("b", SamplingParams(max_tokens=2))


def test_nothing_recompiles_after_warmup():
    engine = Engine(loaded(num_layers=1, max_seq_len=32), slots=2)
    engine.warmup()
    compiled = engine.stats().compilations
    assert compiled == len(engine.stats().buckets) + 1  # one prefill per prompt bucket, one decode
    settings = [
        SamplingParams(max_tokens=4, temperature=0.0),
        SamplingParams(max_tokens=6, temperature=0.9, top_p=0.8, seed=1),
        SamplingParams(max_tokens=3, temperature=1.2, top_k=3, repetition_penalty=1.2, logprobs=2),
        SamplingParams(max_tokens=5, temperature=0.5, min_p=0.1, frequency_penalty=0.5, stop=("z",)),
    ]
    with engine:
        requests = [engine.submit("q" * n, p) for n, p in zip((1, 5, 17, 26), settings)]
        for r in requests:
            r.result(timeout=60)
    assert engine.stats().compilations == compiled


def test_a_vocabulary_larger_than_the_tokenizers_never_yields_the_extra_ids():
    # 40 embedding rows for 32 characters (a padded table); rows 32 and 33 would win every step unmasked.
    lm = favour(loaded(vocab_size=40), 32, 33)
    assert lm.tokenizer.vocab_size == len(ALPHABET) == 32
    settings = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=1.0, top_k=5, seed=2),
        SamplingParams(temperature=0.7, top_p=0.9, seed=3),
        SamplingParams(temperature=1.5, min_p=0.01, seed=4),
        SamplingParams(temperature=0.0, repetition_penalty=1.3),
    ]
    with Engine(lm, slots=2) as engine:
        assert engine.vocab_size == 32
        results = [engine.generate("the", p.replace(max_tokens=8, logprobs=5)) for p in settings]
        with pytest.raises(InferenceError, match=r"prompt token id 35 is outside the vocabulary \[0, 32\)"):
            engine.submit([1, 35], SamplingParams())
    for result in results:
        assert max(result.token_ids) < 32
        assert all(i < 32 and np.isfinite(lp) for step in result.logprobs for i, _, lp in step.top)
        assert result.text == lm.tokenizer.decode(result.token_ids)


def test_int8_weights_are_a_quarter_the_size_and_close():
    lm = loaded(num_layers=2, d_model=32, d_ff=64)
    q = quantize_params(lm.params)
    kernel = q["decoder"]["layer_0"]["ffn"]["up"]["kernel"]
    assert isinstance(kernel, Int8Weight) and kernel.q.dtype == np.int8 and kernel.scale.shape == (1, 64)
    assert kernel.q.nbytes * 4 == np.asarray(lm.params["decoder"]["layer_0"]["ffn"]["up"]["kernel"]).nbytes
    assert weight_bytes(q) < 0.35 * weight_bytes(lm.params)  # the rest: scales, biases and norms in float32
    w = np.asarray(lm.params["decoder"]["layer_0"]["ffn"]["up"]["kernel"])
    back = np.asarray(dequantize(q)["decoder"]["layer_0"]["ffn"]["up"]["kernel"])
    assert np.all(np.abs(back - w) <= kernel.scale / 2 + 1e-7)  # each weight within half a step
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 32, (4, 16)), jnp.int32)

    def perplexity(params):
        logits = lm.model.apply({"params": params}, ids[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return float(jnp.exp(-jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()))

    assert perplexity(dequantize(q)) == pytest.approx(perplexity(lm.params), rel=0.01)


def test_int8_engine_decodes_with_the_quantized_weights():
    # Its greedy tokens and log-probabilities are those of the full forward pass with the weights rounded to int8,
    # which differ measurably from float32's: int8 was applied, not only asked for.
    lm = loaded(num_layers=1)
    rounded = dataclasses.replace(lm, params=dequantize(quantize_params(lm.params)))
    prompt = lm.tokenizer.encode("hello")
    with Engine(lm, slots=1, int8=True) as engine:
        result = engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0, logprobs=0))
    tokens, logprobs = naive_greedy(rounded, prompt, 6)
    assert list(result.token_ids) == tokens
    got = np.array([lp.logprob for lp in result.logprobs])
    np.testing.assert_allclose(got, logprobs, atol=1e-5)
    assert np.abs(got - naive_greedy(lm, prompt, 6)[1]).max() > 1e-3


def test_load_model_reads_a_run_folder(tmp_path):
    with pytest.raises(InferenceError, match="is not a run folder: expected config.yaml and checkpoints/"):
        from mulm_jax.infer import load_model

        load_model(tmp_path)


def run_bench_decode(repo_root, tmp_path, *args):
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(Config(model=tiny_model(max_seq_len=32))))
    return subprocess.run(
        [sys.executable, "-m", "mulm_jax", "bench", "decode", "--config", str(config), *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bench_decode_prints_its_figures_as_json(repo_root, tmp_path):
    done = run_bench_decode(
        repo_root,
        tmp_path,
        "--batch",
        "2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "6",
        "--repeats",
        "1",
        "--max-len",
        "32",
        "--bandwidth-mb",
        "16",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["batch"] == 2 and figures["tokens_per_sec"] > 0 and figures["ms_per_step"] > 0
    limit = 2 * figures["bandwidth_gb_s"] * 1e9 / figures["weight_bytes"]  # two sequences per read of the weights
    assert figures["limit_tokens_per_sec"] == pytest.approx(limit, rel=0.01)
    assert figures["fraction_of_limit"] == pytest.approx(figures["tokens_per_sec"] / limit, rel=0.01)
    assert figures["compilations"] == 3  # prefill buckets 16 and 32, and decode: none after warm-up
    assert "Unable to initialize backend" not in done.stderr  # jax's probe of backends absent here stays quiet


def test_bench_decode_refuses_slots_too_short_for_the_request(repo_root, tmp_path):
    done = run_bench_decode(repo_root, tmp_path, "--prompt-len", "16", "--new-tokens", "128")
    assert done.returncode == 2
    assert "--prompt-len 16 + --new-tokens 128 need 144 positions, but slots have 32" in done.stderr
