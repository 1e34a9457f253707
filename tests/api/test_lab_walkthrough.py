"""The lab's walkthrough view in a real browser (Chromium driven by playwright, as in test_lab_browser.py), over four
kinds of model served by one `serve.py`: a character model the size of `make demo`'s (GPT-2-like), a Llama-style
BPE model (GQA, RoPE, RMSNorm, SwiGLU), an imported GPT-2 (50,257 logits) and an encoder-decoder.

For each, the page follows a token: the numbers it shows for a step equal those `python -m mulm_jax inspect
activations --json` prints for that position, its own recomputations from the numbers shown agree with the model's
(no step says ≠), every step names its equation, shape and function; the sampling explorer's kept set holds every
token the server draws with the same settings and seeds, with the model probabilities the server reports; ablating
a head with a click shows the prediction the API gives with that head ablated. The demo-size model's first paint
after Inspect is timed, and the view is shot and checked at 1280 and 390 px. Another test holds the explorer's port
of the sampling rules to mulm_jax.infer.sampling itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import (
    ALPHABET,
    CORPUS,
    SERVER_KEY,
    Lab,
    Server,
    byte_level_tokenizer,
    random_params,
    sentencepiece_tokenizer,
)
from mulm_jax.config import Config, config_from_dict, dump_config
from mulm_jax.data.tokenizer import CharTokenizer, Tokenizer
from mulm_jax.interop.convert import from_hf, save_params
from mulm_jax.models import build_model

pytestmark = pytest.mark.browser

# The models' settings: a character model the size of `make demo`'s (configs/shakespeare_char.yaml: learned
# positions, LayerNorm, GELU), a Llama-style one and an encoder-decoder (post-norm and sinusoidal positions, as in
# 2017), all with random weights; an imported GPT-2 is transformers' own random model through `from_hf`.
DEMO = dict(
    vocab_size=65,
    d_model=128,
    num_layers=4,
    num_heads=4,
    d_ff=512,
    max_seq_len=64,
    positional="learned",
    norm="layernorm",
    ffn="gelu",
    use_bias=False,
)
LLAMA = dict(
    vocab_size=320,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    d_ff=64,
    max_seq_len=16,
    positional="rope",
    norm="rmsnorm",
    ffn="swiglu",
    use_bias=False,
    tie_embeddings=False,
)
ENCDEC = dict(
    architecture="encoder_decoder",
    vocab_size=32,
    d_model=32,
    num_layers=2,
    num_heads=4,
    d_ff=64,
    max_seq_len=16,
    positional="sinusoidal",
    norm_position="post",
    ffn="relu",
)
GPT2 = dict(vocab_size=50257, n_embd=32, n_layer=2, n_head=4, n_positions=16, initializer_range=0.2)
# The small models' context is 16 tokens: the server then compiles one prompt length for each.
# name -> (prompt, the position followed, steps this kind of model has, activations compared with the CLI's)
SHOWN = ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.pattern", "blocks.0.resid_post", "logits"]
WALKS = {
    "demo": ("First Citizen:\nBefore we proceed", 9, ["blocks.0.ln1.out", "blocks.0.mlp.post", "pos_embed"], SHOWN),
    "llama": (
        "the history of the city",
        4,
        ["blocks.0.attn.rope", "blocks.0.mlp.post", "blocks.0.attn.mask"],
        SHOWN + ["blocks.0.attn.rot_q"],
    ),
    "gpt2": ("The quick brown fox", 5, ["blocks.0.attn.mask", "pos_embed", "logits"], SHOWN),
    "encdec": (
        "the old city",
        0,
        ["encoder", "blocks.0.cross_attn.pattern", "blocks.0.ln_cross.out"],
        SHOWN + ["blocks.0.cross_attn.pattern"],
    ),
}
# Sampling settings moved in the explorer, then drawn from the server with the same ones.
SETTINGS = [
    dict(temperature=0.8, top_k=5, top_p=1, min_p=0, repetition_penalty=1),
    dict(temperature=1.3, top_k=0, top_p=0.6, min_p=0, repetition_penalty=1.4),
    dict(temperature=1, top_k=12, top_p=0.9, min_p=0.08, repetition_penalty=0.7),
    dict(temperature=0, top_k=0, top_p=1, min_p=0, repetition_penalty=2),
]
FIELDS = {
    "temperature": "#sx-temperature-n",
    "top_k": "#sx-top-k-n",
    "top_p": "#sx-top-p-n",
    "min_p": "#sx-min-p-n",
    "repetition_penalty": "#sx-repetition-n",
}
DRAWS = 8  # tokens drawn per setting (seeds 0..7: one request with n=8)
LOGPROB_TOLERANCE = 2e-4  # the page's numbers have 6 significant digits; the server's prefill is another program
READY = "document.getElementById('wt-steps').dataset.state === 'ready'"


def native_run(folder: Path, tokenizer: Tokenizer, seed: int, **model) -> Path:
    """A run folder as training leaves one, with random parameters."""
    cfg = config_from_dict({"model": model}).model
    net = build_model(cfg)
    inputs, _ = net.window_inputs(jnp.zeros((1, 4), jnp.int32))
    params = jax.device_get(random_params(net, *inputs, seed=seed)["params"])
    folder.mkdir(parents=True)
    tokenizer.save(folder)
    (folder / "config.yaml").write_text(dump_config(Config(model=cfg)))
    save_params(folder, params)
    return folder


def imported_gpt2(folder: Path) -> Path:
    """GPT-2 as `convert from-hf` imports it: transformers' model with random weights and a byte-level BPE tokenizer
    of ~290 tokens (the model's other rows are padding the server never draws)."""
    import torch
    import transformers

    torch.manual_seed(0)
    source = folder.with_name(folder.name + "-hf")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).save_pretrained(source)
    byte_level_tokenizer(source)
    return from_hf(source, folder)


def build_runs(root: Path) -> dict[str, Path]:
    return {
        "demo": native_run(root / "demo", CharTokenizer(sorted(set(CORPUS))), 1, **DEMO),
        "llama": native_run(root / "llama", sentencepiece_tokenizer("bpe"), 2, **LLAMA),
        "gpt2": imported_gpt2(root / "gpt2"),
        "encdec": native_run(root / "encdec", CharTokenizer(list(ALPHABET)), 3, **ENCDEC),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """serve.py with the demo-size model; the others are served on first use (POST /v1/models)."""
    root = tmp_path_factory.mktemp("walkthrough")
    runs = build_runs(root / "runs")
    server = Server(root, "--checkpoint", str(runs["demo"]), "--slots", "2")
    server.runs = runs
    yield server
    server.stop()


def serve(server: Server, name: str) -> Tokenizer:
    if name not in [m["id"] for m in server.http.get("/v1/models").json()["data"]]:
        assert server.http.post("/v1/models", json={"run_dir": name}).status_code == 201
    return Tokenizer.load(server.runs[name])


@pytest.fixture
def lab(browser, server, tmp_path):
    tab = Lab(browser, server, tmp_path, SERVER_KEY)
    tab.failed = []  # responses with an error status, by URL
    tab.page.on("response", lambda r: tab.failed.append((r.status, r.url)) if r.status >= 400 else None)
    yield tab
    tab.page.close()


@pytest.fixture
def inspect_cli():
    """Starts `python -m mulm_jax inspect activations ... --json` (its answer is read by `cli_answer`); stops it at
    the end of the test should the test not have read it."""
    started = []

    def start(run: Path, prompt: str, names: list[str], position: int) -> subprocess.Popen:
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mulm_jax",
                    "inspect",
                    "activations",
                    "--checkpoint",
                    str(run),
                    "--prompt",
                    prompt,
                    "--names",
                    ",".join(names),
                    "--position",
                    str(position),
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def cli_answer(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    return json.loads(out)


def activations(server: Server, model: str, prompt, position: int, ablate=()) -> dict:
    """The API's answer to the page's own request: every activation at `position` (with heads ablated)."""
    body = {
        "model": model,
        "prompt": prompt,
        "position": position,
        "ablate": [{"layer": layer, "head": head} for layer, head in ablate],
    }
    answer = server.http.post("/v1/inspect/activations", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def top_tokens(logits: list[float], vocab: int, count: int = 5) -> list[tuple[int, float]]:
    """The likeliest tokens among the tokenizer's, with their probabilities (as the server's logprobs)."""
    kept = np.asarray(logits[:vocab], np.float64)
    logp = kept - kept.max() - np.log(np.exp(kept - kept.max()).sum())
    order = sorted(range(vocab), key=lambda i: (-logp[i], i))[:count]
    return [(i, float(np.exp(logp[i]))) for i in order]


def shown(lab: Lab, name: str, index: int | None = None) -> list:
    """The numbers the page shows for one activation (its data-values)."""
    selector = f'figure.vec[data-name="{name}"]' + ("" if index is None else f'[data-index="{index}"]')
    return json.loads(lab.page.get_attribute(selector, "data-values"))


def element_shot(lab: Lab, selector: str, name: str) -> None:
    """A screenshot of one element, cut from the whole page (where the view's sticky bar does not cover it)."""
    box = lab.call(
        "s => { const r = document.querySelector(s).getBoundingClientRect(); "
        "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; }",
        selector,
    )
    lab.page.screenshot(path=str(lab.shots / f"{name}.png"), full_page=True, clip=box)


def inspect(lab: Lab, prompt: str) -> float:
    """Click Inspect; the seconds until the walkthrough is painted."""
    page = lab.page
    page.fill("#wt-prompt", prompt)
    lab.call("() => { delete document.getElementById('wt-steps').dataset.state; }")
    started = time.perf_counter()
    page.click("#wt-run")
    lab.until(f"{READY} || !document.getElementById('notice').hidden")
    seconds = time.perf_counter() - started
    assert page.is_hidden("#notice"), page.text_content("#notice")
    return seconds


def follow(lab: Lab, position: int, head: int) -> None:
    page = lab.page
    if page.get_attribute("#wt-steps", "data-position") != str(position):
        page.click(f"#wt-tokens .tok[data-position='{position}']")
        page.wait_for_selector(f"#wt-steps[data-state=ready][data-position='{position}']")
    page.select_option("#wt-layer", "0")
    page.select_option("#wt-head", str(head))
    page.wait_for_selector(f"#wt-steps[data-head='{head}'][data-keys=ready]")
    page.wait_for_selector("#wt-steps[data-labels=ready]")


def check_sampling(lab: Lab, server: Server, tokenizer: Tokenizer, expected_prompt: list[int]) -> None:
    """Each setting moved in the explorer: the kept set holds every token the server draws with it."""
    page = lab.page
    for settings in SETTINGS:
        for key, field in FIELDS.items():
            page.fill(field, str(settings[key]))
        explored = lab.value("(({kept, vocab, request}) => ({kept, vocab, request}))(window.__mulmSampling)")
        request, kept = explored["request"], set(explored["kept"])
        assert request["prompt"] == expected_prompt
        assert {k: request[k] for k in settings} == settings
        assert kept and len(kept) == int(page.get_attribute("#wt-sampling", "data-kept-count"))
        if settings["temperature"] == 0:
            assert len(kept) == 1
        answer = server.http.post("/v1/completions", json={**request, "n": DRAWS, "seed": 100})
        assert answer.status_code == 200, answer.text
        before = tokenizer.decode(expected_prompt)
        following = {i: tokenizer.decode(expected_prompt + [i])[len(before) :] for i in range(explored["vocab"])}
        for choice in answer.json()["choices"]:
            text, logprob = choice["text"], choice["logprobs"]["token_logprobs"][0]
            candidates = [i for i, t in following.items() if t == text]
            page_logprobs = lab.call("ids => ids.map((i) => window.__mulmSampling.modelLogprob(i))", candidates)
            drawn = [i for i, lp in zip(candidates, page_logprobs) if abs(lp - logprob) <= LOGPROB_TOLERANCE]
            assert drawn, (
                f"the server drew {text!r} (log p {logprob}); the page's log p for the ids that spell it: "
                f"{dict(zip(candidates, page_logprobs))}"
            )
            assert set(drawn) & kept, (
                f"the server drew {text!r} (ids {drawn}) with {settings}: not in the page's kept set {sorted(kept)}"
            )
    page.click("#sx-reset")


def check_ablation(lab: Lab, server: Server, model: str, prompt, position: int, vocab: int) -> None:
    """Ablating layer 0's head 1 with a click shows the API's prediction with it ablated; a second click restores."""
    page = lab.page
    before = json.loads(page.get_attribute("#wt-prediction", "data-top"))
    page.click('#wt-steps button[data-ablate="0:1"]')
    lab.until(f"{READY} && 'baseTop' in document.getElementById('wt-prediction').dataset")
    assert page.get_attribute('#wt-steps button[data-ablate="0:1"]', "aria-pressed") == "true"
    now = json.loads(page.get_attribute("#wt-prediction", "data-top"))
    reference = activations(server, model, prompt, position, ablate=[(0, 1)])["activations"]["logits"]["values"]
    want = top_tokens(reference, vocab)
    assert [t["id"] for t in now] == [i for i, _ in want]
    np.testing.assert_allclose([t["prob"] for t in now], [p for _, p in want], rtol=1e-6, atol=1e-9)
    assert max(abs(a["prob"] - b["prob"]) for a, b in zip(now, before)) > 1e-4 or [t["id"] for t in now] != [
        t["id"] for t in before
    ], "ablating the head changed nothing shown"
    base = int(page.get_attribute("#wt-prediction", "data-base-top"))
    assert base == before[0]["id"]
    probs = dict(top_tokens(reference, vocab, vocab))
    assert float(page.get_attribute("#wt-prediction", "data-base-prob-now")) == pytest.approx(probs[base], rel=1e-6)
    page.click('#wt-steps button[data-ablate="0:1"]')
    lab.until(f"{READY} && !('baseTop' in document.getElementById('wt-prediction').dataset)")
    restored = json.loads(page.get_attribute("#wt-prediction", "data-top"))
    assert [t["id"] for t in restored] == [t["id"] for t in before]


@pytest.mark.slow  # about 75 s: three models traced in the browser
def test_the_walkthrough_follows_a_token_of_each_kind_of_model(lab, server, inspect_cli, subtests):
    """One tab walks the four models in turn (one server and one browser for all: a test each would let xdist's
    workers start a server each)."""
    for name in WALKS:
        with subtests.test(model=name):
            walk(lab, server, inspect_cli, name)


def walk(lab: Lab, server: Server, inspect_cli, name: str) -> None:
    prompt, position, kinds, names = WALKS[name]
    errors, failed = len(lab.errors), len(lab.failed)
    cli = inspect_cli(server.runs[name], prompt, names, position)  # runs while the page is walked
    tokenizer = serve(server, name)
    page = lab.page
    page.goto(f"{lab.url}?{name}#walkthrough")  # another URL: a fresh load, which lists the model just served
    page.wait_for_selector("body[data-shown=walkthrough]")
    page.select_option("#model", name)
    first = inspect(lab, prompt)
    follow(lab, position, head=1)

    # The numbers shown for layer 0, head 1 at the followed token are those `inspect activations` prints for that
    # position (another compiled program than the server's: equal to the rounding of their 6 significant digits).
    want = cli_answer(cli)
    acts = want["activations"]
    info = server.http.post(
        "/v1/inspect/activations", json={"model": name, "prompt": prompt, "names": ["logits"]}
    ).json()
    H, K = info["num_heads"], info["num_kv_heads"]

    def close(page_values, cli_values):  # float32 sums differ in their last bits, relative to the vector's size
        np.testing.assert_allclose(page_values, cli_values, rtol=1e-5, atol=1e-5 * np.abs(cli_values).max())

    close(shown(lab, "blocks.0.attn.q", 1), acts["blocks.0.attn.q"]["values"][1])
    close(shown(lab, "blocks.0.attn.pattern", 1), acts["blocks.0.attn.pattern"]["values"][1])
    close(shown(lab, "blocks.0.attn.k", 1 // (H // K)), acts["blocks.0.attn.k"]["values"][1 // (H // K)])
    close(shown(lab, "blocks.0.resid_post"), acts["blocks.0.resid_post"]["values"])
    close(shown(lab, "logits"), acts["logits"]["values"])
    rows = len(acts["logits"]["values"])
    assert int(page.get_attribute("#wt-steps", "data-position")) == want["position"] == position
    if name == "encdec":  # the cross-attention's pattern is over the source tokens
        source = want["source_tokens"]
        close(shown(lab, "blocks.0.cross_attn.pattern", 1), acts["blocks.0.cross_attn.pattern"]["values"][1])
        assert len(acts["blocks.0.cross_attn.pattern"]["values"][1]) == len(source) > 1
    else:
        assert len(shown(lab, "blocks.0.attn.pattern", 1)) == len(want["tokens"])
    if name == "llama":  # before and after RoPE, the gate and up projections, GQA
        close(shown(lab, "blocks.0.attn.rot_q", 1), acts["blocks.0.attn.rot_q"]["values"][1])
        assert "RMSNorm" in page.text_content('li.step[data-step="blocks.0.ln1.out"] h3')
        assert "SwiGLU" in page.text_content('li.step[data-step="blocks.0.mlp.post"] h3')
        assert "grouped-query" in page.text_content('li.step[data-step="blocks.0.attn.qkv"]')
    if name == "gpt2":
        assert rows == 50257

    # Every step: an equation, its shape in the model's letters, the function that computes it; the page's own
    # recomputations from the numbers it shows agree with the model's.
    steps = lab.value(
        "[...document.querySelectorAll('#wt-steps li.step')].map(s => ({key: s.dataset.step, "
        "eq: s.querySelectorAll('.eq').length, shape: s.querySelectorAll('.shape').length, "
        "fn: (s.querySelector('.fn') || {}).textContent}))"
    )
    assert {s["key"] for s in steps} >= set(kinds)
    assert all(s["eq"] and s["fn"] and s["fn"].startswith("mulm_jax/") for s in steps), steps
    assert all(s["shape"] for s in steps if s["key"] != "encoder"), steps
    checks = lab.value("[...document.querySelectorAll('#wt-steps .check')].map(c => c.textContent)")
    assert len(checks) >= 5 and all(c.startswith("✓") for c in checks), checks

    # The sampling explorer against tokens the server draws.
    vocab = lab.value("window.__mulmSampling.vocab")
    assert vocab == tokenizer.vocab_size < rows or name == "encdec"
    ids = [t["id"] for t in want["tokens"]]
    expected = [t["id"] for t in want["source_tokens"]] + ids[:1] if name == "encdec" else ids[: position + 1]
    check_sampling(lab, server, tokenizer, expected)

    # A head ablated with a click.
    check_ablation(lab, server, name, prompt, position, vocab)

    if name == "demo":
        # The first paint after Inspect: the first prompt compiles the server's activations pass for its length;
        # another prompt of that length finds it compiled.
        again = inspect(lab, "Speak, speak.\nFirst Citizen:")
        print(f"\nwalkthrough first paint on the demo-size model: {first:.2f} s (compiling), {again:.2f} s after")
        assert again < 4.0, f"the walkthrough took {again:.2f} s to paint (target 2 s)"
        follow(lab, 5, head=1)
        lab.shot("walkthrough-1280")
        for key, field in FIELDS.items():
            page.fill(field, str(SETTINGS[2][key]))
        element_shot(lab, "#wt-sampling", "sampling-1280")
        assert page.locator("#sx-bars li[data-removed]").count() > 0
        page.set_viewport_size({"width": 390, "height": 900})
        lab.until("Number(document.getElementById('wt-steps').dataset.width) < 390")
        assert lab.fits_the_window(), "the walkthrough is wider than a 390 px window"
        lab.shot("walkthrough-390")
        element_shot(lab, "#wt-sampling", "sampling-390")
        page.set_viewport_size({"width": 1280, "height": 900})
    assert lab.fits_the_window()
    assert lab.failed[failed:] == [] and lab.errors[errors:] == [], (lab.failed, lab.errors)


def test_the_explorers_filters_keep_what_the_servers_keep_with_ties_and_padded_vocabularies(browser):
    """The page's port of the sampling rules (sampling.js) against mulm_jax.infer.sampling itself, on logits rounded
    to make ties at the top-k, top-p and min-p boundaries, with ids past the tokenizer's vocabulary and penalised
    prompt tokens. The module is loaded from the lab folder as it is (no server)."""
    from mulm_jax.api.routes.lab import LAB_DIR
    from mulm_jax.infer.sampling import SamplingArrays, SamplingParams, apply_penalties, filter_logits, mask_vocab

    rng = np.random.default_rng(0)
    V = 48
    cases = []
    for i in range(200):
        logits = np.round(rng.normal(0, 2, V), 1)  # one decimal: many ties
        logits[rng.integers(0, V, 4)] = logits.max() if i % 4 == 0 else logits[0]
        cases.append(
            {
                "logits": logits.tolist(),
                "vocab": int(rng.integers(V // 2, V + 1)),
                "seen": sorted(set(rng.integers(0, V, int(rng.integers(0, 8))).tolist())),
                "s": {
                    "temperature": float(rng.choice([0, 0.3, 0.7, 1, 1.7])),
                    "topK": int(rng.choice([0, 1, 3, 7])),
                    "topP": float(rng.choice([1, 0.95, 0.6, 0.3, 0.05])),
                    "minP": float(rng.choice([0, 0.02, 0.2, 0.6])),
                    "repetition": float(rng.choice([1, 1.3, 0.6, 3])),
                },
            }
        )
    page = browser.new_page()
    try:
        page.route(
            "http://lab.test/**",
            lambda route: route.fulfill(
                path=LAB_DIR / route.request.url.rsplit("/", 1)[1], content_type="text/javascript"
            )
            if route.request.url.endswith(".js")
            else route.fulfill(body="<!doctype html>", content_type="text/html"),
        )
        page.goto("http://lab.test/")
        kept = page.evaluate(
            "async (cases) => { const {choose} = await import('/sampling.js'); return cases.map("
            "(c) => choose(c.logits, c.s, new Set(c.seen), c.vocab).kept); }",
            cases,
        )
    finally:
        page.close()
    for case, page_kept in zip(cases, kept):
        s = case["s"]
        row = SamplingArrays.row(
            SamplingParams(
                temperature=s["temperature"],
                top_k=s["topK"],
                top_p=s["topP"],
                min_p=s["minP"],
                repetition_penalty=s["repetition"],
            ),
            0,
        )
        prompt_mask = np.zeros((1, V), bool)
        prompt_mask[0, case["seen"]] = True
        logits = apply_penalties(
            mask_vocab(jnp.asarray([case["logits"]], jnp.float32), case["vocab"]),
            row,
            jnp.zeros((1, V), jnp.int32),
            jnp.asarray(prompt_mask),
        )
        if s["temperature"] == 0:  # choose_tokens: greedy rows take the argmax
            server_kept = [int(jnp.argmax(logits[0]))]
        else:
            server_kept = np.flatnonzero(np.isfinite(np.asarray(filter_logits(logits, row))[0])).tolist()
        assert page_kept == server_kept, case
