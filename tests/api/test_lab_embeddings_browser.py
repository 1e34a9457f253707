"""The lab's embeddings view in a real browser against `serve.py` serving a tiny trained run: a token's nearest
tokens, the residual's and an analogy's equal what `inspect embeddings --json` prints for the same run; the PCA
scatter and the residual's layers are drawn; the view fits 1280 and 390 px windows."""

from __future__ import annotations

import json

import pytest

from support import Server, tiny_run
from mulm_jax.__main__ import main
from mulm_jax.config import load_config
from mulm_jax.train.loop import train

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-embeddings")
    cfg = load_config("configs/shakespeare_char.yaml", tiny_run(root, "train.steps=10", "train.checkpoint_every=10"))
    train(cfg, root / "run", quiet=True)
    return root / "run"


@pytest.fixture(scope="module")
def server(run):
    (run.parent / "data").mkdir()
    server = Server(run.parent, "--checkpoint", f"tiny={run}", "--slots", "1")
    yield server
    server.stop()


def cli(run, capsys, *args: str) -> dict:
    assert (
        main(["inspect", "embeddings", "--checkpoint", str(run), "--out", str(run.parent / "out"), "--json", *args])
        == 0
    )
    return json.loads(capsys.readouterr().out)


def shown_list(lab) -> dict:
    """The nearest-token table as the page shows it, with its test hooks."""
    return lab.call(
        """() => {
          const element = document.getElementById("em-nearest");
          return {ids: element.dataset.ids.split(",").map(Number), cosines: element.dataset.cosines.split(",").map(Number),
                  cells: [...element.querySelectorAll("tr[data-index]")].map((tr) => [...tr.cells].map((td) => td.textContent))};
        }"""
    )


def visible(text: str) -> str:
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def test_the_embeddings_view_lists_what_the_cli_prints_and_draws_the_projections(lab, server, run, capsys):
    page = lab.page
    lab.open("embeddings")
    points = int(page.get_attribute("#em-map", "data-points"))  # the table's projection, before any query
    expected = cli(run, capsys, "--token", "e", "--top-k", "6")
    assert points == expected["ordinary_tokens"] == len(expected["projection"]["points"])

    page.fill("#em-token", "e")
    page.fill("#em-top-k", "6")
    page.click("#em-run")
    page.wait_for_selector("#em-nearest[data-ids]:not([data-ids=''])")
    shown = shown_list(lab)
    assert shown["ids"] == [n["id"] for n in expected["nearest"]]
    assert shown["cosines"] == [n["cosine"] for n in expected["nearest"]]
    assert [row[1] for row in shown["cells"]] == [visible(n["text"]) for n in expected["nearest"]]
    assert [row[4] for row in shown["cells"]] == [f"{n['cosine']:.4f}" for n in expected["nearest"]]
    marked = {int(i) for i in page.get_attribute("#em-map", "data-marked").split(",")}
    assert marked == {expected["token"]["id"], *shown["ids"]}
    lab.shot("embeddings-token")

    residual = cli(run, capsys, "--prompt", "To be, or not", "--layer", "1", "--position", "-2", "--top-k", "6")
    page.fill("#em-prompt", "To be, or not")
    page.fill("#em-layer", "1")
    page.fill("#em-position", "-2")
    page.click("#em-residual-run")
    page.wait_for_selector("#em-residual-panel:not([hidden])")
    assert shown_list(lab)["ids"] == [n["id"] for n in residual["nearest"]]
    assert page.get_attribute("#em-residual", "data-layer") == "1"
    assert page.get_attribute("#em-residual", "data-points") == str(len("To be, or not"))
    page.fill("#em-slider", "0")
    assert page.get_attribute("#em-residual", "data-layer") == "0"
    lab.shot("embeddings-residual")

    analogy = cli(run, capsys, "--analogy", "T,t,o", "--top-k", "6")
    for field, token in zip(("#em-a", "#em-b", "#em-c"), "Tto"):
        page.fill(field, token)
    page.click("#em-analogy-run")
    lab.until(
        f"document.getElementById('em-nearest').dataset.ids === {json.dumps(','.join(str(n['id']) for n in analogy['analogy']['nearest']))}"
    )
    assert "−" in page.text_content("#em-status")

    page.hover("#em-map", position={"x": 5, "y": 5})  # no point there: the hint stays
    assert "Hover over a point" in page.text_content("#em-hover")
    assert lab.fits_the_window()
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#em-run")
    page.wait_for_selector("#em-status:has-text('Nearest to')")
    assert lab.fits_the_window()
    lab.shot("embeddings-390")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert lab.errors == []
