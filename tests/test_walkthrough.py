"""The walkthrough notebook (notebooks/walkthrough.ipynb): it executes against a freshly trained run of the demo's
architecture, every numpy step matching the model's cached activation, and docs/walkthrough.md renders the committed
notebook as it is, outputs included."""

from __future__ import annotations

import re

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from support import ROOT
from mulm_jax.config import load_config
from mulm_jax.nn.hooks import vocabulary
from mulm_jax.train.loop import train

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
RENDERED = ROOT / "docs" / "walkthrough.md"
# Holds every character of the notebook's prompt ("ROMEO:\nBut soft, what light").
CORPUS = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n"
) * 40


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def printed(nb) -> str:
    return "".join(output.get("text", "") for cell in code_cells(nb) for output in cell.outputs)


@pytest.mark.slow  # 45 s: a 10-step run of the demo model, then the notebook in a kernel of its own
def test_the_notebook_rebuilds_every_activation_of_a_fresh_run(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    # The demo's model section as it is (4 layers, 4 heads, width 128, ...); a small corpus and 10 steps: the
    # notebook's checks hold for any weights.
    cfg = load_config(
        ROOT / "configs/shakespeare_char.yaml",
        [
            f"data.sources=[{corpus}]",
            f"data.out_dir={tmp_path / 'datasets'}",
            "train.steps=10",
            "train.batch_size=8",
            "train.warmup_steps=2",
            "train.eval_every=10",
            "train.eval_batches=2",
            "train.checkpoint_every=10",
            "train.log_every=5",
        ],
    )
    train(cfg, tmp_path / "run", quiet=True)

    # A copy, executed in memory and written beside the run (for a look when this fails): the committed notebook and
    # its outputs stay as they are. The working directory is outside the repository, so the notebook finds the
    # root from where the package was installed.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("MULM_WALKTHROUGH_RUN", str(tmp_path / "run"))  # the kernel inherits the environment
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / "walkthrough.ipynb")

    outputs = [output for cell in code_cells(nb) for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = printed(nb)
    assert f"{tmp_path / 'run'}: the checkpoint of step 10" in text
    names = vocabulary(cfg.model)
    step_by_step = [name for name in names if not name.startswith("blocks.") or name.startswith("blocks.0.")]
    missing = [name for name in step_by_step if f"{name} [{names[name]}] matches the model" not in text]
    assert not missing, f"no match message for {missing}:\n{text}"
    for layer in range(cfg.model.num_layers):
        layer_names = [name for name in names if name.startswith(f"blocks.{layer}.")]
        assert f"layer {layer}: all {len(layer_names)} activations match the model" in text
    assert f"all {len(names)} cached activations rebuilt in numpy" in text
    assert "forward(ids) matches the model's logits end to end" in text
    assert "the next character:" in text


def test_the_committed_notebook_ran_on_the_demo_run_and_docs_render_it():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert all(cell.execution_count == i for i, cell in enumerate(cells, 1)), "cells executed out of order"
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    steps = yaml.safe_load((ROOT / "configs/shakespeare_char.yaml").read_text())["train"]["steps"]
    assert f"runs/shakespeare: the checkpoint of step {steps}\n" in printed(nb), "run `make walkthrough`"
    # docs/walkthrough.md is this notebook rendered (`make walkthrough`): each cell's code and output, in order.
    page = RENDERED.read_text()
    assert page.startswith(
        "# A forward pass by hand\n\n[README](../README.md) · [all pages]"
        "(../README.md#documentation) · [tensor names](notation.md)\n"
    )
    at = 0
    for cell in cells:
        for part in [cell.source] + [re.sub(r"(?m)^(?=.)", "    ", o.get("text", "")) for o in cell.outputs]:
            found = page.find(part, at)
            assert found >= 0, (
                f"docs/walkthrough.md is not the notebook's rendering (`make walkthrough`): {part[:200]!r}"
            )
            at = found + len(part)
