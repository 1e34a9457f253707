"""The lab's Compare and Models views in headless Chromium against `serve.py`, over two tiny runs that differ in
their positions (RoPE and ALiBi): the Models view lists both, one click puts a run in the comparison, both curves
and the setting that differs are drawn, and the same prompt traced through each (both served on the way) gives the
next tokens that POST /v1/inspect gives."""

from __future__ import annotations

import pytest

from support import Server, tiny_run
from mulm_jax.config import load_config
from mulm_jax.train.loop import train

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for positional in ("rope", "alibi"):
        overrides = tiny_run(
            root, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=4", "train.log_every=1"
        )
        cfg = load_config("configs/shakespeare_char.yaml", overrides + [f"model.positional={positional}"])
        train(cfg, root / "runs" / "study" / positional, quiet=True)
    server = Server(root)
    yield server
    server.stop()


def test_two_runs_compared_from_the_models_view_curves_settings_and_one_prompt_through_each(lab, server):
    page = lab.page
    lab.open("models")
    assert page.locator("#md-runs tr[data-index]").count() == 2
    assert "study/alibi" in page.text_content("#md-runs") and "alibi" in page.text_content("#md-runs")
    page.click("#md-runs tr[data-index='0'] button[data-action=compare]")  # opens Compare with it ticked
    page.wait_for_selector("body[data-shown=compare]")
    assert page.is_checked("#cp-runs input[value='study/alibi']") and page.is_hidden("#cp-result")
    page.check("#cp-runs input[value='study/rope']")
    lab.until("document.querySelector('#cp-loss').dataset.runs === '2'")

    # both runs' curves in their own colours, and the one setting that differs
    assert {"31,119,180", "255,127,14"} <= lab.colours("cp-loss")
    assert page.text_content("#cp-diff").count("model.positional") == 1
    assert page.locator("#cp-diff tr[data-index]").count() == 1
    assert "alibi" in page.text_content("#cp-diff tr[data-index='0']")
    assert page.is_visible("#cp-bpb") and lab.value("document.querySelector('#cp-bpb').dataset.runs") == "2"
    page.select_option("#cp-x", "tokens")
    assert int(lab.value("document.querySelector('#cp-loss').dataset.points")) >= 4
    lab.shot("compare")

    # the same prompt through each: both served on the way, the next tokens those of POST /v1/inspect
    page.fill("#cp-prompt", "To be, or not")
    page.fill("#cp-layer", "1")
    page.fill("#cp-head", "1")
    page.click("#cp-run")
    lab.until("document.querySelectorAll('#cp-inspect .column').length === 2", timeout=180_000)
    served = {m["id"]: m["run_dir"] for m in server.http.get("/v1/models").json()["data"]}
    assert sorted(served) == ["study-alibi", "study-rope"]
    for run in ("study/alibi", "study/rope"):
        column = page.locator(f"#cp-inspect .column[data-run='{run}']")
        answer = server.http.post(
            "/v1/inspect", json={"model": run.replace("/", "-"), "prompt": "To be, or not", "include": ["tokens"]}
        ).json()
        assert column.get_attribute("data-next") == ",".join(str(t["id"]) for t in answer["next"])
        assert column.locator("canvas.cp-attention[data-layer='1']").count() == 1
        assert column.locator("tr[data-index]").count() == 5 + 4  # top 5 next tokens, 2 layers x 2 heads
    lab.shot("compare-inspect")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        assert lab.fits_the_window(), f"compare is wider than a {width} px window"
    lab.shot("compare-390")
    assert lab.errors == []
