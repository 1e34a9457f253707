"""The lab's Compare and Models views in headless Chromium against `serve.py`, over two tiny runs (random weights,
metrics written by hand) that differ in their positions (RoPE and ALiBi): the Models view lists both, one click puts a run in the comparison, both curves
and the setting that differs are drawn, and the same prompt traced through each (both served on the way) gives the
next tokens that POST /v1/inspect gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import Server, loaded
from mulm_jax.config import Config, DataConfig
from mulm_jax.runs import metrics_path, write_run_files
from mulm_jax.train.checkpoint import Checkpoints
from mulm_jax.train.step import TrainState

pytestmark = pytest.mark.browser


def write_run(folder, positional: str) -> None:
    """A run folder as a 4-step training leaves one, written without training: a tiny model with random weights
    (its config, tokenizer and checkpoint at step 4) and metrics rows (training every step, evaluations at 2, 4)."""
    lm = loaded(
        seed=len(positional), num_layers=2, num_heads=2, d_model=32, d_ff=64, max_seq_len=64, positional=positional
    )
    folder.mkdir(parents=True)
    write_run_files(folder, Config(model=lm.config.model, data=DataConfig(sources=("corpus.txt",))), lm.tokenizer)
    checkpoints = Checkpoints(folder, keep=1)
    checkpoints.save(TrainState(step=np.int32(4), params=lm.params, opt_state={}, rng=np.zeros(2, np.uint32)), {})
    checkpoints.close()
    rows = [{"time": 100.0 + s, "step": s, "loss": 3.5 - 0.1 * s, "tokens_per_sec": 1000.0} for s in range(1, 5)]
    rows += [{"time": 100.5 + s, "step": s, "val_loss": 3.6 - 0.1 * s, "val_bpb": 5.2 - 0.1 * s} for s in (2, 4)]
    metrics_path(folder).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for positional in ("rope", "alibi"):
        write_run(root / "runs" / "study" / positional, positional)
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
    page.fill("#cp-prompt", "to be, or not")
    page.fill("#cp-layer", "1")
    page.fill("#cp-head", "1")
    page.click("#cp-run")
    lab.until("document.querySelectorAll('#cp-inspect .column').length === 2", timeout=180_000)
    served = {m["id"]: m["run_dir"] for m in server.http.get("/v1/models").json()["data"]}
    assert sorted(served) == ["study-alibi", "study-rope"]
    for run in ("study/alibi", "study/rope"):
        column = page.locator(f"#cp-inspect .column[data-run='{run}']")
        answer = server.http.post(
            "/v1/inspect", json={"model": run.replace("/", "-"), "prompt": "to be, or not", "include": ["tokens"]}
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
