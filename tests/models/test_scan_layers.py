"""model.scan_layers: one scanned block per stack gives the per-layer model's logits, loss and gradients from the same
weights; per_layer / stacked convert parameters and optimizer states; a scanned run loads, generates, inspects,
exports and starts a new run per layer."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from support import ALPHABET, ROOT, MeshSteps, fresh_state, random_ids, random_params, tiny_model
from mulm_jax.config import Config, TrainConfig, dump_config, load_config
from mulm_jax.data.tokenizer import CharTokenizer
from mulm_jax.errors import MulmError
from mulm_jax.infer import Engine, SamplingParams, load_model
from mulm_jax.inspect import Tracer
from mulm_jax.interop.convert import from_hf, save_params, to_hf
from mulm_jax.models import build_model
from mulm_jax.models.info import describe, param_shapes
from mulm_jax.models.layers import per_layer, stacked
from mulm_jax.nn.attention import KVCache
from mulm_jax.nn.hooks import hooks
from mulm_jax.train.init_from import start_from
from mulm_jax.train.optimizer import make_optimizer, make_schedule
from mulm_jax.train.step import batch_sums

MODELS = {
    "decoder": dict(),
    "llama-like": dict(positional="rope", norm="rmsnorm", ffn="swiglu", num_kv_heads=2, use_bias=False),
    "post-norm": dict(norm_position="post", positional="sinusoidal"),
    "encoder_decoder": dict(architecture="encoder_decoder", num_encoder_layers=2, num_decoder_layers=3),
}


def both_ways(name: str, remat: bool = False, **overrides):
    """The per-layer and the scanned model of one tiny config (3 layers), per-layer parameters drawn for them, and
    a training window's model inputs."""
    cfg = tiny_model(**{"num_layers": 3, **MODELS[name], **overrides})
    per_layer_model = build_model(cfg, remat)
    scanned_model = build_model(dataclasses.replace(cfg, scan_layers=True), remat)
    inputs, _ = per_layer_model.window_inputs(jnp.asarray(random_ids(2, 12)))
    return per_layer_model, scanned_model, random_params(per_layer_model, *inputs)["params"], inputs


def shapes(tree):
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_scanned_model_gives_the_per_layer_models_logits(name, remat):
    per_layer_model, scanned_model, params, inputs = both_ways(name, remat)
    want_BxTxV = per_layer_model.apply({"params": params}, *inputs)
    got_BxTxV = jax.jit(scanned_model.apply)({"params": stacked(params)}, *inputs)
    chex.assert_trees_all_close(got_BxTxV, want_BxTxV, atol=1e-5, rtol=1e-5)


def test_a_scanned_stack_lowers_to_one_layer_whatever_its_depth():
    def program_size(num_layers: int, scan_layers: bool) -> int:
        model = build_model(tiny_model(num_layers=num_layers, scan_layers=scan_layers))
        ids_BxT = jax.ShapeDtypeStruct((2, 8), jnp.int32)
        params = param_shapes(model.cfg)
        return len(jax.jit(model.apply).lower({"params": params}, ids_BxT).as_text())

    assert program_size(8, scan_layers=True) == program_size(2, scan_layers=True)
    assert program_size(8, scan_layers=False) > 3 * program_size(2, scan_layers=False)


@pytest.mark.parametrize("name", ["decoder", "encoder_decoder"])
def test_stacked_params_have_the_scanned_models_shapes_and_round_trip(name):
    per_layer_model, scanned_model, params, _ = both_ways(name)
    scanned = stacked(params)
    assert shapes(scanned) == shapes(param_shapes(scanned_model.cfg))
    assert "layers" in scanned["decoder"] and "layer_0" not in scanned["decoder"]
    chex.assert_shape(scanned["decoder"]["layers"]["ffn"]["up"]["kernel"], (per_layer_model.cfg.decoder_layers, 16, 32))
    chex.assert_trees_all_equal(per_layer(scanned), params)
    chex.assert_trees_all_equal(stacked(per_layer(scanned)), scanned)
    assert describe(scanned_model.cfg) == describe(per_layer_model.cfg)


def test_optimizer_and_train_states_convert_both_ways():
    _, _, params, _ = both_ways("llama-like")
    tx = make_optimizer(TrainConfig(weight_decay=0.1, grad_clip=1.0))  # clip + adamw with its weight-decay mask
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    update = jax.jit(tx.update)
    updates, state = update(grads, tx.init(params), params)
    scanned_updates, scanned_state = update(stacked(grads), tx.init(stacked(params)), stacked(params))
    chex.assert_trees_all_close(per_layer(scanned_state), state, atol=1e-7)
    chex.assert_trees_all_close(per_layer(scanned_updates), updates, atol=1e-7)
    chex.assert_trees_all_equal(stacked(state), scanned_state)
    train_state = fresh_state(tx, stacked(params))
    chex.assert_trees_all_equal(per_layer(train_state), fresh_state(tx, params))
    chex.assert_trees_all_equal(stacked(per_layer(train_state)), train_state)


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("name", ["decoder", pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def test_one_training_batch_gives_the_same_loss_and_gradients_both_ways(name, remat):
    # Dropout keys per layer differ between the layouts: compared without dropout (deterministic).
    per_layer_model, scanned_model, params, _ = both_ways(name, remat, dropout=0.1)
    ids_BxT = jnp.asarray(random_ids(2, 13, seed=1))
    batch = {"inputs": ids_BxT[:, :-1], "targets": ids_BxT[:, 1:]}

    def loss_and_grads(model, p):
        loss = lambda p: batch_sums(model, p, batch, pad_id=None, rng=None, deterministic=True)["loss_sum"]  # noqa
        return jax.jit(jax.value_and_grad(loss))(p)

    loss, grads = loss_and_grads(per_layer_model, params)
    scanned_loss, scanned_grads = loss_and_grads(scanned_model, stacked(params))
    np.testing.assert_allclose(scanned_loss, loss, rtol=1e-6)
    chex.assert_trees_all_close(per_layer(scanned_grads), grads, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", pytest.param("muon", marks=pytest.mark.slow)])
def test_the_train_step_takes_the_same_step_both_ways_from_the_same_weights(optimizer):
    # The run's own step (mesh, clipping, the optimizer: Muon orthogonalises each layer's matrix of a stack alone).
    # No biases: a key bias's gradient is zero but for rounding, which Adam's normalisation blows up to the lr.
    per_layer_model, scanned_model, params, _ = both_ways("llama-like")
    ids_BxT = random_ids(4, 13, seed=1)
    tc = TrainConfig(optimizer=optimizer, lr=1e-2, warmup_steps=0, schedule="constant")
    tx = make_optimizer(tc)
    results = []
    for model, p in ((per_layer_model, params), (scanned_model, stacked(params))):
        steps = MeshSteps(model, tx, 1, None, make_schedule(tc), p)
        state, metrics = steps.train(steps.place(fresh_state(tx, p)), steps.batch(ids_BxT[:, :-1], ids_BxT[:, 1:]))
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), per_layer(jax.device_get(state.params))))
    (loss, norm, new_params), (scanned_loss, scanned_norm, scanned_new_params) = results
    np.testing.assert_allclose(scanned_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(scanned_norm, norm, rtol=1e-5)
    chex.assert_trees_all_close(scanned_new_params, new_params, atol=1e-5)


def test_scanned_model_with_dropout_trains_with_a_key_per_layer():
    _, scanned_model, params, inputs = both_ways("decoder", remat=True, dropout=0.5)

    def run(key):
        return scanned_model.apply(
            {"params": stacked(params)}, *inputs, deterministic=False, rngs={"dropout": jax.random.key(key)}
        )

    a_BxTxV, b_BxTxV = run(0), run(1)
    assert np.isfinite(a_BxTxV).all() and not np.allclose(a_BxTxV, b_BxTxV)


def test_caches_and_hook_points_on_a_scanned_model_say_to_load_it_per_layer():
    _, scanned_model, params, (ids_BxT,) = both_ways("decoder")
    variables = {"params": stacked(params)}
    cfg = scanned_model.cfg
    caches = tuple(KVCache.zeros(2, cfg.max_seq_len, cfg.kv_heads, cfg.head_dim) for _ in range(cfg.num_layers))
    with pytest.raises(MulmError, match="scan_layers=true runs whole passes only.*per_layer"):
        scanned_model.apply(variables, ids_BxT, pos_BxT=jnp.broadcast_to(jnp.arange(12), (2, 12)), caches=caches)
    with pytest.raises(MulmError, match="hook points.*load_model"), hooks(keep=lambda name: True):
        scanned_model.apply(variables, ids_BxT, mutable=["activations"])


def test_a_scanned_checkpoint_loads_per_layer_for_the_engine_and_the_tracer(tmp_path):
    per_layer_model, scanned_model, params, _ = both_ways("decoder")
    CharTokenizer(list(ALPHABET)).save(tmp_path)
    (tmp_path / "config.yaml").write_text(dump_config(Config(model=scanned_model.cfg)))
    save_params(tmp_path, jax.device_get(stacked(params)))  # a checkpoint as a scanned run saves it
    lm = load_model(tmp_path)
    assert lm.config.model == per_layer_model.cfg and not lm.model.cfg.scan_layers
    chex.assert_trees_all_close(lm.params, params)
    with Engine(lm, slots=1) as engine:
        assert engine.generate("to be", SamplingParams(max_tokens=4, temperature=0.0)).completion_tokens == 4
    trace = Tracer(lm).trace("to be or not", top_k=2)
    chex.assert_shape(trace.attention_LxHxTxT, (3, 4, 12, 12))


@pytest.mark.slow  # a 4-step training run, then generation, a trace, an export and --init-from: about 20 s
def test_a_scanned_run_loads_per_layer_to_generate_inspect_export_and_start_runs(tmp_path):
    from mulm_jax.train.loop import train  # imported here: the other tests of this file do not need the run loop
    from support import tiny_run

    overrides = tiny_run(
        tmp_path,
        "train.steps=4",
        "train.checkpoint_every=2",
        "train.eval_every=4",
        "model.scan_layers=true",
        "model.use_bias=true",
        "train.remat=true",
    )
    cfg = load_config(ROOT / "configs/shakespeare_char.yaml", overrides)
    result = train(cfg, tmp_path / "run", quiet=True)
    assert "layers" in result.params["decoder"]

    lm = load_model(tmp_path / "run")
    assert not lm.config.model.scan_layers and lm.step == 4
    assert sorted(k for k in lm.params["decoder"] if k.startswith("layer")) == ["layer_0", "layer_1"]
    chex.assert_trees_all_close(lm.params, per_layer(jax.device_get(result.params)))
    ids_BxT = random_ids(2, 32, vocab=40)
    scanned_model = build_model(cfg.model)
    chex.assert_trees_all_close(
        lm.model.apply({"params": lm.params}, ids_BxT),
        scanned_model.apply({"params": result.params}, ids_BxT),
        atol=1e-5,
    )

    prompt = random_ids(1, 13, vocab=lm.tokenizer.vocab_size)[0].tolist()
    with Engine(lm, slots=1) as engine:
        completion = engine.generate(prompt[:5], SamplingParams(max_tokens=5, temperature=0.0))
    assert completion.completion_tokens == 5
    trace = Tracer(lm).trace(prompt, top_k=2)
    chex.assert_shape(trace.attention_LxHxTxT, (2, cfg.model.num_heads, 13, 13))

    to_hf(tmp_path / "run", tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "back")
    flat = lambda p: traverse_util.flatten_dict(jax.device_get(p))  # noqa: E731
    back = flat(load_model(tmp_path / "back").params)
    assert back.keys() == flat(lm.params).keys()
    for key, value in flat(lm.params).items():
        np.testing.assert_array_equal(back[key], value, err_msg="/".join(key))

    # --init-from: the source comes per layer; the new run's parameters keep the new run's layout.
    new_params = random_params(scanned_model, ids_BxT[:1, :4])["params"]
    into_scanned, _ = start_from(str(tmp_path / "run"), new_params, lm.tokenizer)
    assert shapes(into_scanned) == shapes(new_params)
    chex.assert_trees_all_close(per_layer(into_scanned), lm.params)
    into_per_layer, _ = start_from(str(tmp_path / "run"), per_layer(new_params), lm.tokenizer)
    chex.assert_trees_all_close(into_per_layer, lm.params)
