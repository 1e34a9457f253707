"""The web lab on pairs, in a real browser against `serve.py`: a pairs data set's examples with the tokens trained on
highlighted, and an encoder-decoder's cross-attention over the source in the inspect view."""

from __future__ import annotations

import pytest

from support import Server, pairs_run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-pairs")
    (root / "data").mkdir()
    _, run = pairs_run(root)  # its data set in root / "datasets", the server's data set folder
    server = Server(root, "--checkpoint", f"pairs={run}", "--slots", "1")
    yield server
    server.stop()


def test_the_lab_shows_the_loss_mask_of_pairs_and_the_cross_attention_over_the_source(lab, server):
    page = lab.page
    lab.open("datasets")
    page.click("#ds-list tr[data-index='0']")
    page.wait_for_selector("#ds-examples:not([hidden]) .example")
    first = page.locator("#ds-examples-list .example").first
    read, trained = first.locator(".read").all_text_contents(), first.locator(".trained").all_text_contents()
    source, target = "".join(read).split("␣"), "".join(trained).removesuffix("⟨eos⟩").split("␣")
    assert target == source[::-1] and "".join(trained).endswith("⟨eos⟩")  # the pair swaps two words
    lab.shot("datasets-pairs")

    lab.open("inspect")
    page.fill("#in-prompt", "ab ij")
    page.click("#in-run")
    page.wait_for_selector("#in-cross-panel:not([hidden])")
    assert len(lab.colours("in-cross")) > 8, "the cross-attention heatmap is blank"
    box = page.locator("#in-cross").bounding_box()
    page.locator("#in-cross").hover(position={"x": box["width"] - 70, "y": box["height"] - 10})
    assert "source" in page.text_content("#in-cross-hover")
    lab.shot("inspect-cross-attention")
    assert lab.errors == []
