"""Backend choices: the CPU's tricks (glibc setting, XLA:CPU options, weight-first layout, float32 serving) apply
under the CPU backend only; elsewhere the natural layout and the config's dtype. The backend query is patched
either way, so that each test checks the same choice on a CPU and on a GPU machine."""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import loaded
from mulm_jax import platform
from mulm_jax.infer import Engine
from mulm_jax.infer.layout import KERNEL_T
from mulm_jax.infer.quantize import Int8Weight


@pytest.fixture
def cpu_backend(monkeypatch):
    """Every choice made as on the CPU, whichever device computes."""
    monkeypatch.setattr(platform, "backend", lambda: "cpu")


@pytest.fixture
def gpu_backend(monkeypatch):
    """Every choice made as on a GPU, whichever device computes."""
    monkeypatch.setattr(platform, "backend", lambda: "gpu")


def leaf_names(params) -> set[str]:
    return {path[-1].key for path, _ in jax.tree_util.tree_flatten_with_path(params)[0] if hasattr(path[-1], "key")}


def float_dtypes(params) -> set[str]:
    leaves = jax.tree.leaves(params, is_leaf=lambda w: isinstance(w, Int8Weight))
    return {str(w.dtype) for w in leaves if not isinstance(w, Int8Weight) and jnp.issubdtype(w.dtype, jnp.floating)}


def decode_hlo(engine: Engine) -> str:
    """The decode step as traced (StableHLO text), without compiling it."""
    active = np.ones((engine.steps.slots,), bool)
    return engine.steps.decode.lower(engine.params, engine.steps.init_state(), active, np.bool_(False)).as_text()


def dots(hlo: str, dtype: str) -> list[str]:
    """The products in `hlo` whose operands are all of `dtype` (f32, bf16)."""
    found = []
    for line in hlo.splitlines():
        if "stablehlo.dot_general" in line:
            operands = re.findall(r"tensor<[^>]*>", line.rsplit(" : ", 1)[-1].split(" -> ")[0])
            if operands and all(t.endswith(f"x{dtype}>") for t in operands):
                found.append(line)
    return found


def test_the_cpu_tricks_are_on_under_the_cpu_backend(cpu_backend):
    assert platform.compiler_options() == platform.CPU_COMPILER_OPTIONS
    assert platform.weight_first_serving()
    assert platform.serving_dtype("bfloat16") == "float32"
    assert platform.configure_process()  # glibc's mallopt took the settings


def test_the_cpu_tricks_are_off_when_the_backend_is_not_the_cpu(gpu_backend, monkeypatch):
    monkeypatch.setattr(platform, "keep_freed_memory", lambda: pytest.fail("mallopt called off the CPU"))
    assert not platform.configure_process()
    assert platform.compiler_options() is None
    assert not platform.weight_first_serving()
    assert platform.serving_dtype("bfloat16") == "bfloat16"
    assert platform.serving_dtype("float32") == "float32"


def test_a_bfloat16_config_is_served_in_float32_on_the_cpu(cpu_backend, caplog):
    with caplog.at_level(logging.WARNING, logger="mulm_jax.infer.serving"):
        engine = Engine(loaded(seed=1, dtype="bfloat16"), slots=4)
    assert "serving in float32 on the CPU although model.dtype is bfloat16" in caplog.text
    assert float_dtypes(engine.params) == {"float32"}
    assert engine.steps.cfg.dtype == "float32"  # computed in float32 too, the KV cache included
    assert engine.steps.init_state().caches[0].k_BxKxSxDh.dtype == jnp.float32
    assert KERNEL_T in leaf_names(engine.params)  # the weight-first layout
    hlo = decode_hlo(engine)
    assert "optimization_barrier" in hlo  # 4 rows: products made weight-first
    assert "bf16" not in hlo and len(dots(hlo, "f32")) >= 7  # q, k, v, out, up, down, logits: all float32


def test_serving_weights_are_in_the_config_dtype_and_natural_layout_off_the_cpu(gpu_backend, caplog):
    with caplog.at_level(logging.WARNING, logger="mulm_jax.infer.serving"):
        engine = Engine(loaded(seed=1, dtype="bfloat16"), slots=4)
    assert "serving in" not in caplog.text
    assert float_dtypes(engine.params) == {"bfloat16"}
    assert engine.steps.cfg.dtype == "bfloat16"
    assert KERNEL_T not in leaf_names(engine.params) and "kernel" in leaf_names(engine.params)
    hlo = decode_hlo(engine)
    assert "optimization_barrier" not in hlo
    assert len(dots(hlo, "bf16")) >= 7  # q, k, v, out, up, down, logits (on a GPU the whole suite runs this path)
    assert float_dtypes(Engine(loaded(seed=1), slots=1).params) == {"float32"}  # a float32 config stays float32


def test_int8_serving_off_the_cpu_keeps_float32_scales_and_converts_each_weight_into_its_matmul(gpu_backend):
    engine = Engine(loaded(seed=1, dtype="bfloat16"), slots=1, int8=True)
    weights = [
        w
        for w in jax.tree.leaves(engine.params, is_leaf=lambda w: isinstance(w, Int8Weight))
        if isinstance(w, Int8Weight)
    ]
    assert weights and all(w.q.dtype == jnp.int8 and w.scale.dtype == jnp.float32 for w in weights)
    assert float_dtypes(engine.params) == {"bfloat16"}  # norm scales
    # In the compiled step each int8 kernel is converted to bfloat16 and scaled, and that feeds a dot directly:
    # nothing (no barrier, no copy of all the weights up front) stands between the conversion and its product.
    hlo = (
        engine.steps.decode.lower(engine.params, engine.steps.init_state(), np.ones((1,), bool), np.bool_(False))
        .compiler_ir(dialect="hlo")
        .as_hlo_text()
    )
    producers = {line.split(" = ")[0].strip(): line for line in hlo.splitlines() if " = " in line}

    def operand_chain(name: str) -> list[str]:
        """The ops from `name` back to a parameter, through single-operand shape ops and the scale multiply."""
        chain = []
        while name in producers:
            line = producers[name]
            op = line.split(" = ", 1)[1].split("(", 1)[0].split()[-1]
            chain.append(op)
            if op not in ("convert", "multiply", "reshape", "bitcast", "transpose", "copy"):
                break
            name = line.split("(", 1)[1].split(")", 1)[0].split(",")[0].strip().split(" ")[-1]
        return chain

    dots = [line for line in hlo.splitlines() if " dot(" in line]
    int8_dots = []
    for line in dots:
        operands = line.split(" dot(", 1)[1].split(")", 1)[0].split(", ")
        for operand in operands:
            chain = operand_chain(operand.strip().split(" ")[-1])
            if "convert" in chain and chain[-1] == "parameter":
                int8_dots.append(chain)
    # query, key, value, out, up, down, and the tied token table's logits; the position table is only looked up.
    assert len(weights) == 8 and len(int8_dots) == 7
