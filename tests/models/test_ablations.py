"""The one-switch ablations (model.residual, model.attention_scale, model.mlp): bad values are refused, and each
switch trains with the real loop and generates what the full forward pass predicts. What each switch changes in a
block is checked against numpy in tests/nn (test_blocks, test_attention) and tests/inspect/test_activations."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest

from support import ROOT, tiny_model, tiny_run
from mulm_jax.config import ConfigError, ModelConfig, load_config


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("mlp", "off", "model.mlp='off' is not valid: expected one of 'ffn', 'none'"),
        ("attention_scale", "sqrt(d)", "model.attention_scale='sqrt(d)' is not valid: expected one of 'sqrt', 'none'"),
        ("residual", "no", "model.residual='no' is not valid: expected bool"),
    ],
)
def test_a_bad_switch_value_is_refused_naming_it_from_a_file_and_from_python(field, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        tiny_model(**{field: value})
    with pytest.raises(ConfigError, match=re.escape(expected)):
        dataclasses.replace(ModelConfig(), **{field: value}).validate()


@pytest.mark.slow
@pytest.mark.parametrize(
    "switch",
    [["model.residual=false"], ["model.attention_scale=none"], ["model.mlp=none", "model.scan_layers=true"]],
    ids=["no_residual", "unscaled_attention", "no_mlp_scanned"],
)
def test_each_switch_trains_its_loss_down_and_generates_the_full_passes_greedy_tokens(tmp_path, switch):
    from mulm_jax.infer import Engine, SamplingParams, load_model
    from mulm_jax.runs import read_metrics
    from mulm_jax.train.loop import train

    config = load_config(ROOT / "configs" / "shakespeare_char.yaml", tiny_run(tmp_path, "train.steps=40", *switch))
    train(config, tmp_path / "run", quiet=True)
    losses = [row["loss"] for row in read_metrics(tmp_path / "run") if "loss" in row]
    assert np.mean(losses[-2:]) < losses[0] - 0.25  # from near ln(40) = 3.7 (without residuals, to ~3.1)

    lm = load_model(tmp_path / "run")
    for field in ("residual", "attention_scale", "mlp"):
        assert getattr(lm.config.model, field) == getattr(config.model, field)
    prompt = lm.tokenizer.encode("To be, or ")
    with Engine(lm, slots=1) as engine:
        tokens = list(engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0)).token_ids)
    assert len(tokens) == 6
    for i, token in enumerate(tokens):  # each greedy token is the full pass's argmax over the text so far
        logits = lm.model.apply({"params": lm.params}, jnp.asarray([prompt + tokens[:i]], jnp.int32))
        assert int(np.argmax(logits[0, -1])) == token
