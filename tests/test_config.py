"""Config loading: YAML + overrides, type checks, validation of impossible models."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from mulm_jax.config import (
    ConfigError,
    DataConfig,
    RopeScaling,
    ServeConfig,
    config_from_dict,
    dump_config,
    load_config,
    setting,
)
from mulm_jax.config_schema import options
from mulm_jax.data.assemble import check_settings
from mulm_jax.data.errors import DataError


def test_overrides_replace_yaml_values_and_parse_types(repo_root):
    cfg = load_config(
        repo_root / "configs/shakespeare_char.yaml",
        [
            "model.num_layers=2",
            "train.lr=3e-4",
            "model.rope_scaling={type: yarn, factor: 4}",
            "model.positional=rope",
            "data.sources=[wikitext2]",
        ],
    )
    assert cfg.model.num_layers == 2
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.rope_scaling == RopeScaling(type="yarn", factor=4.0)
    assert cfg.data.sources == ("wikitext2",)
    assert cfg.model.d_model == 128  # untouched values come from the file


def test_dumped_config_loads_back_equal(repo_root):
    cfg = load_config(repo_root / "configs/llama_tiny.yaml", ["model.rope_scaling={type: linear, factor: 2}"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_yaml_exponent_without_dot_is_read_as_float():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_layer=2", r"unknown config key 'model.num_layer' \(did you mean model.num_layers\?\)"),
        ("modle.d_model=2", r"unknown config key 'modle' \(did you mean model\?\)"),
        ("model.ffn=tanh", r"model.ffn='tanh' is not valid: expected one of 'relu', 'relu2', 'gelu', 'swiglu'"),
        ("model.logit_softcap=0", r"model.logit_softcap=0.0 must be a positive number"),
        ("train.cooldown_frac=1.5", r"train.cooldown_frac=1.5 must be in \[0, 1\]"),
        ("train.lr=0", r"train.lr=0.0 must be a positive number"),
        ("train.eval_every=0", r"train.eval_every=0 must be a positive integer"),
        ("train.min_lr=-1e-4", r"train.min_lr=-0.0001 must be zero or more"),
        ("train.optimizer=muon2", r"train.optimizer='muon2' is not valid: expected one of .*'muon'"),
        ("model.num_layers=2.5", r"model.num_layers=2.5 is not valid: expected int"),
        ("model.use_bias=maybe", r"model.use_bias='maybe' is not valid: expected bool"),
        ("train.lr=fast", r"train.lr='fast' is not valid: expected float"),
        ("model.num_heads=3", r"model.d_model=128 is not divisible by model.num_heads=3"),
        ("model.num_kv_heads=3", r"model.num_heads=4 is not divisible by model.num_kv_heads=3"),
        ("model.num_layers=0", r"model.num_layers=0 must be a positive integer"),
        ("model.dropout=1.5", r"model.dropout=1.5 must be in \[0, 1\)"),
        ("model.attention=sliding_window", r"model.attention=sliding_window needs model.sliding_window"),
        ("model.rope_scaling={type: linear, factor: 2}", r"model.rope_scaling is set but model.positional='learned'"),
        ("model.rope_scaling={type: cubic}", r"model.rope_scaling.type='cubic' is not valid: expected one of"),
        ("model.num_encoder_layers=2", r"model.num_encoder_layers is set but model.architecture='decoder'"),
        ("num_layers", r"override 'num_layers' is not of the form section.key=value"),
    ],
)
def test_bad_values_raise_errors_naming_key_value_and_allowed(repo_root, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(repo_root / "configs/shakespeare_char.yaml", [override])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.positional=rope", "model.d_model=12", "model.num_heads=4"],
            r"model.positional=rope needs an even head width, but d_model / num_heads = 12 / 4 = 3",
        ),
        (
            ["model.attention=sliding_window", "model.sliding_window=65"],
            r"model.sliding_window=65 is larger than the context model.max_seq_len=64",
        ),
        (
            ["model.attention=block_sparse", "model.block_size=128"],
            r"model.block_size=128 is larger than the context model.max_seq_len=64",
        ),
        (
            ["model.positional=rope", "model.rope_scaling={type: longrope, long_factor: [1.0, 2.0]}"],
            r"model.rope_scaling.long_factor has 2 values; expected head_dim / 2 = 16",
        ),
        (
            ["model.positional=rope", "model.rope_scaling={type: ntk, factor: 0.5}"],
            r"model.rope_scaling.factor=0.5 must be >= 1.0",
        ),
    ],
)
def test_impossible_models_are_rejected_before_building(repo_root, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(repo_root / "configs/shakespeare_char.yaml", overrides)


def test_missing_or_malformed_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match=r"config file '.*bad.yaml' is not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"a config must be a mapping of sections, got list"):
        load_config(listed)


def test_cli_set_reports_bad_value_without_traceback(repo_root):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mulm_jax",
            "info",
            "--config",
            "configs/shakespeare_char.yaml",
            "--set",
            "model.norm=batchnorm",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: model.norm='batchnorm' is not valid: expected one of 'layernorm', 'rmsnorm'" in result.stderr
    assert "Traceback" not in result.stderr


@dataclass(frozen=True)
class Inner:
    x: int = setting(1, "an inner number")


@dataclass(frozen=True)
class Outer:
    inner: Inner = setting(Inner(), "a nested section")
    bare: int = 3


def test_flags_and_bodies_are_made_only_of_documented_plain_fields():
    with pytest.raises(TypeError, match="Outer.inner: no flag or body field carries"):
        options(Outer)
    with pytest.raises(TypeError, match="Outer.bare has no help text"):
        options(Outer, exclude=("inner",))
    assert options(Outer, exclude=("inner", "bare")) == []
    with pytest.raises(ValueError, match="Outer has no field nope"):
        options(Outer, exclude=("nope",))
    with pytest.raises(TypeError, match="not gte"):
        setting(1, "a number", gte=0)


def edges(option) -> tuple[list, list]:
    """The values just inside each of `option`'s bounds, and those just past them."""
    step = 1 if option.type is int else 0.01
    inside = [{"ge": b, "le": b, "gt": b + step, "lt": b - step}[op] for op, b in option.bounds.items()]
    outside = [{"ge": b - step, "le": b + step, "gt": b, "lt": b}[op] for op, b in option.bounds.items()]
    return inside, outside


def test_data_assembly_refuses_a_value_past_its_declared_bounds_naming_the_field_and_value():
    """check_settings checks the bounds DataConfig declares (the API body's too, in /openapi.json), and only them."""
    base = DataConfig(sources=("x",), tokenizer="bpe", vocab_size=100)
    for option in options(DataConfig):
        inside, outside = edges(option)
        for value in inside:
            check_settings(dataclasses.replace(base, **{option.name: value}))
        for value in outside:
            with pytest.raises(DataError, match=rf"^{option.name}={re.escape(str(value))} must be "):
                check_settings(dataclasses.replace(base, **{option.name: value}))


def test_a_serve_setting_past_its_declared_bounds_is_refused_naming_the_key_and_value():
    bounded = [option for option in options(ServeConfig) if option.bounds]
    assert bounded
    for option in bounded:
        inside, outside = edges(option)
        for value in inside:
            assert getattr(load_config(None, [f"serve.{option.name}={value}"]).serve, option.name) == value
        for value in outside:
            with pytest.raises(ConfigError, match=rf"^serve\.{option.name}={re.escape(str(value))} must be "):
                load_config(None, [f"serve.{option.name}={value}"])


def test_the_config_imports_neither_jax_nor_the_data_modules_whose_choices_it_declares():
    """DataConfig's Literal choices are declared in mulm_jax.config and taken from there by the data modules; reading
    a config (serve.py --help, --config) stays light."""
    script = "import sys, mulm_jax.config; print(sorted(m for m in sys.modules if m.startswith(('jax', 'mulm_jax.'))))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout == "['mulm_jax.config', 'mulm_jax.config_schema', 'mulm_jax.errors']\n", done.stderr
