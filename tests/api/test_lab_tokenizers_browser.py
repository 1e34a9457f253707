"""The lab's tokenizers view in headless Chromium against `serve.py`: one text under `char` and a SentencePiece BPE
model in the server's data folder, each row's tokens as the API counts them, a picked piece's merges, and the view
at a desktop's and a phone's width."""

from __future__ import annotations

import pytest

from support import Server, sentencepiece_tokenizer

pytestmark = pytest.mark.browser

TEXT = "The history of the city is the history of its people.\nIn the evening they read."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-tokenizers")
    (root / "data").mkdir()
    (root / "data" / "bpe.model").write_bytes(sentencepiece_tokenizer("bpe").serialize())
    server = Server(root)
    yield server
    server.stop()


def test_the_tokenizers_view_draws_char_and_a_sentencepiece_model_as_the_api_tokenizes(lab, server):
    page = lab.page
    lab.open("tokenizers")  # no model served: char, and a path to type
    assert page.input_value("#tk-spec-0") == "char" and page.input_value("#tk-spec-1") == "path"
    page.fill("#tk-text", TEXT)
    page.fill("#tk-path-1", "bpe.model")
    page.click("#tk-run")
    lab.until("document.querySelector('#tk-rows').dataset.state === 'done'")
    answer = server.http.post("/v1/tokenizers/compare", json={"text": TEXT, "tokenizers": ["char", "bpe.model"]})
    char, bpe = answer.json()["tokenizers"]
    rows = page.locator("#tk-rows .tk-row")
    assert rows.count() == 2
    for i, expected in enumerate((char, bpe)):
        row = rows.nth(i)
        assert row.get_attribute("data-name") == expected["name"]
        assert int(row.get_attribute("data-count")) == len(expected["tokens"]) == row.locator(".tok").count()
        assert row.locator(".tok").evaluate_all("chips => chips.map(c => Number(c.dataset.id))") == [
            t["id"] for t in expected["tokens"]
        ]
        split = sum(len(w["tokens"]) for w in expected["split_words"])
        assert row.locator(".tok.tk-split").count() == split
    assert len(char["tokens"]) == len(TEXT) and len(bpe["tokens"]) < len(TEXT)

    # A piece built by two or more merges: clicking it lists them in order.
    piece_id, merges = next((int(i), m) for i, m in bpe["merges"].items() if len(m) >= 2)
    rows.nth(1).locator(f".tok[data-id='{piece_id}']").first.click()
    panel = rows.nth(1).locator(".tk-merges")
    assert panel.is_visible() and panel.get_attribute("data-merges") == str(len(merges))
    assert panel.locator("li").all_text_contents() == [f"{a} + {b} → {c}" for a, b, c in merges]
    rows.nth(0).locator(".tok").first.click()  # char: no merges, and the panel says why
    assert "does not build its pieces by merges" in rows.nth(0).locator(".tk-merges").text_content()
    lab.shot("tokenizers")

    page.click("#tk-add")
    assert page.locator("#tk-pickers .tk-picker").count() == 3 and page.input_value("#tk-spec-2") == "path"
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        assert lab.fits_the_window(), f"the tokenizers view is wider than a {width} px window"
        lab.shot(f"tokenizers-{width}")
    assert lab.errors == []
