"""The web lab in a real browser: Debian's Chromium, headless, driven by playwright, against `serve.py`.

One walk goes the way a learner would: assemble a data set, start training, watch the loss curve, cancel, serve the
run with one click, complete in the playground (equal to the API's own answer), pick a token, inspect the attention;
another checks what a wrong API key shows. Screenshots of each view are kept in the test's folder. Without Chromium
the tests skip, or fail when MULM_REQUIRE_BROWSER=1 (as in CI)."""

from __future__ import annotations

import json
import re

import pytest

from support import CORPUS, KEY_ITEM, SERVER_KEY, TINY, Lab, Server

pytestmark = pytest.mark.browser

LONG = {**TINY, "train.steps": 100000, "train.log_every": 2, "train.eval_every": 4, "train.checkpoint_every": 100000}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text(CORPUS)
    server = Server(root, "--slots", "2")
    yield server
    server.stop()


CANVAS_PIXELS = """id => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) colours.add(`${data[i]},${data[i + 1]},${data[i + 2]},${data[i + 3]}`);
  return {colours: colours.size, image: canvas.toDataURL()};
}"""

RECORD_RENDERS = """() => {
  window.renders = [];
  new MutationObserver(() => window.renders.push(document.querySelectorAll("#pg-output .tok").length))
    .observe(document.getElementById("pg-output"), {childList: true});
}"""


def test_the_lab_from_a_data_set_to_a_trained_model_served_completed_and_inspected(lab, server):
    page = lab.page
    # Data sets: assemble a version from the form and read its manifest.
    lab.open("datasets")
    page.fill("#ds-source", "corpus.txt")
    page.select_option("#ds-tokenizer", "char")
    page.fill("#ds-seq-len", "64")
    page.click("#ds-run")
    page.wait_for_selector("#ds-job[data-state=succeeded]", timeout=120_000)
    page.click("#ds-list tr[data-index='0']")
    version = json.loads(page.text_content("#ds-manifest"))["version"]
    assert server.http.get(f"/v1/datasets/{version}").status_code == 200
    lab.shot("datasets")

    # Training: start a long job on it, see the loss curve get points, cancel it.
    lab.open("training")
    lab.until(f"document.querySelector('#tr-dataset').value === {json.dumps(version)}")
    page.fill("#tr-name", "lab")
    page.fill("#tr-overrides", "\n".join(f"{k}={v}" for k, v in LONG.items()))
    page.click("#tr-run")
    lab.until("Number(document.querySelector('#tr-chart').dataset.trainPoints) >= 2", timeout=180_000)
    assert lab.call(CANVAS_PIXELS, "tr-chart")["colours"] > 2
    # each evaluation's bits per byte: a chart of its own and a figure beside the loss in the status line
    lab.until("Number(document.querySelector('#tr-bpb-chart').dataset.points) >= 1", timeout=60_000)
    assert page.is_visible("#tr-bpb-chart") and lab.call(CANVAS_PIXELS, "tr-bpb-chart")["colours"] > 2
    assert "val_bpb " in page.text_content("#tr-status")
    # and the best head's induction score, which shows when an induction head forms: a small chart, and its head
    lab.until("Number(document.querySelector('#tr-induction-chart').dataset.points) >= 1", timeout=60_000)
    assert page.is_visible("#tr-induction-chart") and lab.call(CANVAS_PIXELS, "tr-induction-chart")["colours"] > 2
    assert re.search(r"induction \d\.\d\d \(head \d+\.\d+\)", page.text_content("#tr-status"))
    assert page.is_enabled("#tr-cancel") and not page.is_enabled("#tr-resume")
    lab.shot("training")
    page.click("#tr-cancel")
    page.wait_for_selector("#tr-status[data-state=cancelled]")
    job = server.http.get("/v1/training/jobs").json()["data"][0]
    assert job["state"] == "cancelled" and job["request"]["dataset"] == version
    assert page.is_enabled("#tr-resume")

    # One click serves the cancelled run (its checkpoint) and opens it in the playground.
    page.click("#tr-serve")
    lab.until(
        "location.hash === '#playground' && document.querySelector('#model').value === 'lab' "
        "&& document.body.dataset.shown === 'playground'",
        timeout=180_000,
    )

    # The field's default (64 tokens) is cut to half the served model's context, so Generate as it opens can work.
    context = next(m["context_length"] for m in server.http.get("/v1/models").json()["data"] if m["id"] == "lab")
    assert int(page.input_value("#pg-max-tokens")) == min(64, context // 2)
    assert page.get_attribute("#pg-max-tokens", "max") == str(context - 1)

    # Playground, keyboard only: a greedy completion streams in and equals the API's answer to the same request.
    page.focus("#pg-prompt")
    page.keyboard.press("Control+a")
    page.keyboard.type("First")
    for field, value in (("#pg-max-tokens", "40"), ("#pg-temperature", "0")):
        page.fill(field, value)
    lab.call(RECORD_RENDERS)
    page.focus("#pg-prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#pg-status[data-state=done]")
    sent = json.loads(page.get_attribute("#pg-output", "data-request"))
    assert sent["path"] == "/v1/completions" and sent["body"]["temperature"] == 0
    answer = server.http.post(sent["path"], json={**sent["body"], "stream": False}).json()
    shown = lab.value("[...document.querySelectorAll('#pg-output .tok')].map(t => t.textContent).join('')")
    assert shown == answer["choices"][0]["text"] and shown
    renders = lab.value("window.renders")
    assert renders[-1] == answer["usage"]["completion_tokens"] >= 2
    assert len(set(renders)) >= 2, f"all tokens arrived in one render: {renders}"

    # Tab to the first generated token, Enter: its alternatives, with probabilities summing to at most 1.
    for _ in range(30):
        if lab.value("document.activeElement.classList.contains('tok')"):
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#pg-detail:not([hidden])")
    probs = [float(p) for p in lab.value("[...document.querySelectorAll('#pg-detail li')].map(li => li.dataset.prob)")]
    assert 1 <= len(probs) <= 5 and all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    first = answer["choices"][0]["text"][0].replace(" ", "␣").replace("\n", "↵")  # as the page shows it
    assert first in page.text_content("#pg-detail h3")
    page.click("#pg-output .tok >> nth=2")
    assert page.get_attribute("#pg-output .tok >> nth=2", "aria-pressed") == "true"
    lab.shot("playground")

    # Chat mode streams a reply through /v1/chat/completions.
    page.check("input[name=pg-mode][value=chat]")
    page.fill("#pg-prompt", "Speak")
    page.focus("#pg-prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#pg-status[data-state=done]")
    assert page.locator("#pg-chat .message.assistant .tok").count() >= 1
    assert json.loads(page.get_attribute("#pg-output", "data-request"))["path"] == "/v1/chat/completions"

    # Inspect: a non-blank attention heatmap that changes with the head; the lens grid and head roles.
    lab.open("inspect")
    page.fill("#in-prompt", "First Citizen:\nBefore we proceed")
    page.click("#in-run")
    page.wait_for_selector("#in-result:not([hidden])")
    head0 = lab.call(CANVAS_PIXELS, "in-attention")
    assert head0["colours"] > 8, "the attention heatmap is blank"
    box = page.locator("#in-attention").bounding_box()  # the last query row, near its last key
    page.locator("#in-attention").hover(position={"x": box["width"] - 60, "y": box["height"] - 10})
    assert "weight" in page.text_content("#in-attention-hover")
    page.select_option("#in-head", "1")
    head1 = lab.call(CANVAS_PIXELS, "in-attention")
    assert head1["image"] != head0["image"], "switching the head did not change the heatmap"
    assert page.get_attribute("#in-attention", "data-head") == "1"
    assert page.locator("#in-heads button").count() == 2 and lab.call(CANVAS_PIXELS, "in-lens")["colours"] > 8
    assert page.locator("#in-roles tr[data-index]").count() == 4  # 2 layers x 2 heads
    lab.shot("inspect")

    # Models: the served run with its parameters.
    lab.open("models")
    assert "lab" in page.text_content("#md-list") and "parameters" in page.text_content("#md-list")
    lab.shot("models")

    # Every view fits a 1280 px window and a 390 px phone.
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        for view in ("playground", "inspect", "datasets", "training", "models"):
            lab.open(view)
            assert lab.fits_the_window(), f"{view} is wider than a {width} px window"
            if width == 390:
                lab.shot(f"{view}-390")
    assert lab.errors == []


def test_a_wrong_api_key_shows_the_servers_error_and_a_right_one_gets_through(browser, server, tmp_path):
    lab = Lab(browser, server, tmp_path, key=None)
    page = lab.page
    try:
        page.goto(lab.url)
        page.wait_for_selector("#key-form:not([hidden])")
        assert "a valid API key is required" in page.text_content("#notice")
        page.fill("#key-input", "sk-wrong")
        page.press("#key-input", "Enter")
        lab.until("document.querySelector('#notice').textContent.includes('not valid')")
        assert page.text_content("#notice").startswith("401 authentication_error: the API key is not valid")
        assert page.is_visible("#key-form")
        lab.shot("wrong-key")
        page.fill("#key-input", SERVER_KEY)
        page.press("#key-input", "Enter")
        page.wait_for_selector("#key-form", state="hidden")
        lab.until("document.querySelector('#model').options.length > 0")
        assert page.is_hidden("#notice")
        assert lab.value(f"sessionStorage.getItem({json.dumps(KEY_ITEM)})") == SERVER_KEY
        assert lab.errors and all("status of 401" in e for e in lab.errors), lab.errors
    finally:
        page.close()
