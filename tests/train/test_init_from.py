"""train.py --init-from: a new run starts from another run's parameters, checked by name and shape; a learned
position table is extended only when asked; the run folder records its start, and resuming ignores the source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import chex
import numpy as np
import pytest

from support import ROOT, random_ids, random_params, tiny_run
from mulm_jax.config import load_config
from mulm_jax.data.tokenizer import CharTokenizer, Tokenizer
from mulm_jax.infer import load_model
from mulm_jax.models import build_model
from mulm_jax.train import cli as train_cli
from mulm_jax.train.init_from import InitFromError, parse_spec, start_from
from mulm_jax.train.loop import train


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-step run of the tiny character model (learned positions, context 32), checkpointed at 2 and 4."""
    tmp = tmp_path_factory.mktemp("source")
    overrides = tiny_run(tmp, "train.steps=4", "train.checkpoint_every=2", "train.eval_every=4")
    train(load_config(ROOT / "configs/shakespeare_char.yaml", overrides), tmp / "run", quiet=True)
    return tmp, overrides


def config(source, *extra):
    tmp, overrides = source
    return load_config(ROOT / "configs/shakespeare_char.yaml", overrides + list(extra))


def logits(run_params, loaded):
    ids = random_ids(2, 32, vocab=loaded.config.model.vocab_size)
    return np.asarray(loaded.model.apply({"params": run_params}, ids))


@pytest.mark.slow  # 17 s: a run started from another's parameters, compared logit by logit
def test_a_new_run_starts_with_the_source_logits_and_records_where_it_came_from(source, tmp_path):
    tmp, _ = source
    result = train(
        config(source, "train.steps=0", "train.lr=3e-4"), tmp_path / "new", quiet=True, init_from=f"{tmp / 'run'}@2"
    )
    at_2 = load_model(tmp / "run", step=2)
    chex.assert_trees_all_close(logits(result.params, at_2), logits(at_2.params, at_2))
    record = json.loads((tmp_path / "new/init_from.json").read_text())
    assert record == {"run": str((tmp / "run").resolve()), "step": 2, "extended_positions": None}


def test_a_run_resuming_from_its_own_checkpoint_does_not_read_the_source(source, tmp_path):
    tmp, _ = source
    shutil.copytree(tmp / "run", tmp_path / "run")
    result = train(config(source), tmp_path / "run", quiet=True, init_from=str(tmp / "missing"))
    assert result.step == 4 and not (tmp_path / "run/init_from.json").exists()


def fresh_params(source, *extra):
    """The parameters a new run of the source's config with `extra` overrides starts from, without compiling."""
    model = build_model(config(source, *extra).model)
    return random_params(model, random_ids(1, 4, vocab=40))["params"]


def test_parameters_of_another_shape_are_listed_by_name(source):
    tmp, _ = source
    with pytest.raises(
        InitFromError,
        match=r"do not match the new model by name and shape \(4 differ\):\n"
        r"  decoder/layer_0/ffn/down/kernel: \(64, 32\) in the source run, \(48, 32\) in the new model\n"
        r"  decoder/layer_0/ffn/up/kernel: \(32, 64\) in the source run, \(32, 48\) in the new model",
    ):
        start_from(str(tmp / "run"), fresh_params(source, "model.d_ff=48"), Tokenizer.load(tmp / "run"))


def test_a_longer_learned_position_table_needs_extend_positions(source):
    tmp, _ = source
    params = fresh_params(source, "model.max_seq_len=64")
    with pytest.raises(
        InitFromError,
        match="learned position table has 32 rows and the new context .* needs 64; add --extend-positions",
    ):
        start_from(str(tmp / "run"), params, Tokenizer.load(tmp / "run"))
    extended, record = start_from(str(tmp / "run"), params, Tokenizer.load(tmp / "run"), extend_positions=True)
    table = extended["embedder"]["position"]["embedding"]
    assert table.shape == (64, 32)
    np.testing.assert_array_equal(table[:32], load_model(tmp / "run").params["embedder"]["position"]["embedding"])
    np.testing.assert_array_equal(table[32:], params["embedder"]["position"]["embedding"][32:])
    assert record["extended_positions"] == {"from": 32, "to": 64}


def test_a_source_with_another_tokenizer_is_refused(source):
    tmp, _ = source
    other = CharTokenizer(list("abc"))
    with pytest.raises(
        InitFromError,
        match=r"the source run's tokenizer \(char, vocab \d+\) is not the data set's "
        r"\(char, vocab 3\)",
    ):
        start_from(str(tmp / "run"), fresh_params(source), other)


def test_train_py_reports_a_bad_init_from_and_extend_positions_alone(source, tmp_path, capsys):
    tmp, overrides = source
    args = [
        "--config",
        str(ROOT / "configs/shakespeare_char.yaml"),
        "--workdir",
        str(tmp_path / "new"),
        "--quiet",
        "--set",
        *overrides,
        "train.steps=0",
    ]
    assert train_cli.main(args + ["--init-from", f"{tmp / 'run'}@3"]) == 2
    assert "has no checkpoint at step 3; it has steps [2, 4]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(args + ["--extend-positions"])
    assert "--extend-positions applies only with --init-from" in capsys.readouterr().err


def test_parse_spec():
    assert parse_spec("runs/a") == (Path("runs/a"), None)
    assert parse_spec("runs/a@500") == (Path("runs/a"), 500)
    with pytest.raises(InitFromError, match="expected RUN or RUN@STEP"):
        parse_spec("runs/a@latest")
