"""Training: the loss, optimizer masking, schedules, gradient accumulation, pmap, NaN stop, config mismatch."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support import ROOT, MeshSteps, fresh_state, random_params, tiny_model, tiny_run, train_py, xla_flags
from mulm_jax.config import TrainConfig, dump_config, load_config
from mulm_jax.data import Tokenizer, eval_batches
from mulm_jax.models import build_model
from mulm_jax.runs import read_metrics
from mulm_jax.train import loop
from mulm_jax.train.loop import TrainingError, train
from mulm_jax.train.optimizer import decay_mask, make_optimizer, make_schedule
from mulm_jax.train.sample import greedy_sampler
from mulm_jax.train.step import token_loss_sums


def test_loss_is_mean_cross_entropy_over_non_pad_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = np.array([[1, 0, 4], [2, 2, 0]], np.int32)
    for b, t, v in ((0, 0, 1), (0, 1, 0), (0, 2, 4), (1, 0, 2), (1, 1, 3)):  # 3 of the 4 real targets predicted
        logits[b, t, v] += 10.0  # (and one pad, which does not count)
    sums = token_loss_sums(jnp.asarray(logits), jnp.asarray(targets), pad_id=0)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    keep = targets != 0
    np.testing.assert_allclose(sums["loss_sum"], nll[keep].sum(), rtol=1e-5)
    assert sums["count"] == keep.sum()
    assert sums["correct_sum"] == (logits.argmax(-1) == targets)[keep].sum() == 3
    assert token_loss_sums(jnp.asarray(logits), jnp.asarray(targets), pad_id=None)["count"] == 6


def test_weight_decay_skips_norms_biases_and_embeddings():
    model = build_model(tiny_model(use_bias=True, positional="learned", tie_embeddings=False))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    mask = decay_mask(params)
    flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat["decoder/layer_0/ffn/up/kernel"] and flat["decoder/layer_0/self_attention/query/kernel"]
    assert flat["embedder/head/kernel"]
    for name in (
        "embedder/token/embedding",
        "embedder/position/embedding",
        "decoder/layer_0/ffn/up/bias",
        "decoder/layer_0/ffn_norm/scale",
        "decoder/final_norm/bias",
    ):
        assert not flat[name], name
    # with zero gradients, AdamW changes exactly the decayed parameters
    tx = make_optimizer(TrainConfig(lr=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0.0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert moved == mask


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(steps=1000, lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine")
    lr = make_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(50)) == pytest.approx(5e-4)
    assert float(lr(100)) == pytest.approx(1e-3)
    assert float(lr(550)) == pytest.approx(5.5e-4, rel=1e-3)  # halfway down the cosine
    assert float(lr(1000)) == pytest.approx(1e-4)
    assert float(make_schedule(dataclasses.replace(cfg, schedule="constant"))(700)) == pytest.approx(1e-3)
    assert float(make_schedule(dataclasses.replace(cfg, schedule="linear"))(550)) == pytest.approx(5.5e-4)


@pytest.mark.parametrize("optimizer", ["adamw", "lion", "adafactor", "sgd", "muon"])
def test_each_optimizer_descends_on_a_quadratic(optimizer):
    tx = make_optimizer(
        TrainConfig(
            optimizer=optimizer, lr=0.1, muon_lr=0.1, warmup_steps=0, steps=50, schedule="constant", weight_decay=0.0
        )
    )
    params = {"w": {"kernel": jnp.ones((4, 4))}}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"]["kernel"] ** 2)  # noqa: E731
    for _ in range(20):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.5 * 16


def one_step(accum_steps: int, optimizer: str = "adamw"):
    cfg = tiny_model(num_layers=2, dropout=0.0)
    model = build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tc = TrainConfig(lr=1e-2, warmup_steps=0, grad_accum_steps=accum_steps, optimizer=optimizer)
    tx = make_optimizer(tc)
    steps = MeshSteps(model, tx, accum_steps, None, make_schedule(tc), params)
    batch = np.random.default_rng(0).integers(0, 32, (8, 9), dtype=np.int32)
    new_state, metrics = steps.train(steps.place(fresh_state(tx, params)), steps.batch(batch[:, :-1], batch[:, 1:]))
    return jax.device_get(new_state.params), jax.device_get(metrics)


def test_gradient_accumulation_equals_one_large_batch():
    params_1, metrics_1 = one_step(1)
    params_4, metrics_4 = one_step(4)
    chex.assert_trees_all_close(params_4, params_1, atol=1e-5)
    np.testing.assert_allclose(metrics_4["loss"], metrics_1["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_4["grad_norm"], metrics_1["grad_norm"], rtol=1e-4)


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from mulm_jax.train import loop

    compile_train_step = loop._compile_train_step

    def nan_after_twelve_steps(*args, **kwargs):  # fault injection: the loss turns NaN from step 13 on
        train_step = compile_train_step(*args, **kwargs)
        calls = []

        def diverging(state, batch):
            state, metrics = train_step(state, batch)
            calls.append(1)
            return state, {**metrics, "loss": metrics["loss"] * (np.nan if len(calls) > 12 else 1.0)}

        return diverging

    monkeypatch.setattr(loop, "_compile_train_step", nan_after_twelve_steps)
    cfg = load_config(ROOT / "configs/shakespeare_char.yaml", tiny_run(tmp_path, "train.checkpoint_every=5"))
    with pytest.raises(
        TrainingError,
        match=r"the training loss became nan at step 15; stopping. The last good "
        r"checkpoint is kept in .*checkpoints \(steps \[5, 10\]\)",
    ):
        train(cfg, tmp_path / "run", quiet=True)
    assert sorted(int(p.name) for p in (tmp_path / "run/checkpoints").iterdir() if p.name.isdigit()) == [5, 10]


def test_a_run_folder_of_another_config_is_refused_with_the_difference(tmp_path):
    overrides = tiny_run(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.yaml").write_text(
        dump_config(load_config(ROOT / "configs/shakespeare_char.yaml", overrides))
    )
    other = load_config(ROOT / "configs/shakespeare_char.yaml", overrides + ["model.num_layers=3"])
    with pytest.raises(
        TrainingError, match=r"(?s)holds a run of a different config.*-  num_layers: 2\n\+  num_layers: 3"
    ):
        train(other, tmp_path / "run", quiet=True)
    # a longer run may resume, but not with other optimizer settings: the diff shows only what is refused
    other = load_config(ROOT / "configs/shakespeare_char.yaml", overrides + ["train.steps=80", "train.beta2=0.95"])
    with pytest.raises(
        TrainingError,
        match=r"(?s)only train.steps, train.eval_every, .* may change\). Difference:"
        r"\n--- .*\n\+\+\+ .*\n@@ .* @@\n-  beta2: 0.99\n\+  beta2: 0.95$",
    ):
        train(other, tmp_path / "run", quiet=True)


@pytest.mark.slow  # 19 s: two runs, the second starting where the first finished
def test_a_finished_run_trains_further_with_more_steps_and_a_recomputed_schedule(tmp_path, capsys):
    first = load_config(ROOT / "configs/shakespeare_char.yaml", tiny_run(tmp_path, "train.steps=10"))
    train(first, tmp_path / "run", quiet=True)
    longer = load_config(
        ROOT / "configs/shakespeare_char.yaml",
        tiny_run(tmp_path, "train.steps=20", "train.log_every=2", "train.eval_every=20"),
    )
    capsys.readouterr()
    result = train(longer, tmp_path / "run", quiet=True)
    old_lr, new_lr = make_schedule(first.train)(10), make_schedule(longer.train)(10)
    assert new_lr > 2 * old_lr  # the decay, now twice as long, is half as far along
    assert (
        f"changed on resume: train.steps: 10 -> 20, train.eval_every: 10 -> 20, train.log_every: 5 -> 2\n"
        f"  the cosine learning-rate decay to min_lr=0.0001 now ends at step 20 instead of 10: at step 10 the "
        f"learning rate is {float(new_lr):.4g} (it was {float(old_lr):.4g})"
    ) in capsys.readouterr().err
    assert result.step == 20
    assert load_config(tmp_path / "run/config.yaml") == longer
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [5, 10, 12, 14, 16, 18, 20]
    lr_of = {r["step"]: r["lr"] for r in rows}  # a row's lr is the one its step used: schedule(step - 1)
    np.testing.assert_allclose(
        [lr_of[12], lr_of[20]], [make_schedule(longer.train)(11), make_schedule(longer.train)(19)], rtol=1e-6
    )
    # each start reports its start-up (until its first step is done) and each evaluation its time
    startups = [r for r in read_metrics(tmp_path / "run") if "startup_s" in r]
    assert [r["step"] for r in startups] == [1, 11]
    assert all(r["startup_s"] > r["first_step_s"] > 0 for r in startups)
    assert all(r["eval_s"] > 0 for r in read_metrics(tmp_path / "run") if "val_loss" in r)


def test_metrics_writer_keeps_pytorch_out_of_the_training_process(tmp_path):
    # tensorboardX imports torch when it is installed: seconds of every start-up, for tensors never written
    script = (
        "import sys; from mulm_jax.train.metrics import MetricsWriter; "
        f"w = MetricsWriter({str(tmp_path)!r}); w.write({{'step': 1, 'loss': 2.0}}); w.close(); "
        f"print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]
    assert read_metrics(tmp_path)[0]["loss"] == 2.0 and list((tmp_path / "tensorboard").glob("events.out.*"))


def test_greedy_sample_is_the_argmax_of_the_window_rerun_per_token_and_compiles_once(caplog):
    model = build_model(tiny_model(max_seq_len=8))

    def params(seed: int):  # weights scaled up so that each next id depends on the context
        return jax.tree.map(lambda x: 3 * x, random_params(model, np.zeros((1, 4), np.int32), seed=seed)["params"])

    logits_fn = jax.jit(lambda params, window_1xT: model.apply({"params": params}, window_1xT))

    def naive(params, prompt: list[int]) -> list[int]:  # the last max_seq_len ids re-run for each new id
        ids = list(prompt)
        for _ in range(12):
            context = ids[-8:]
            logits_1xTxV = logits_fn(params, np.pad([context], ((0, 0), (0, 8 - len(context)))).astype(np.int32))
            ids.append(int(np.argmax(logits_1xTxV[0, len(context) - 1])))
        return ids[len(prompt) :]

    cases = [(1, [5, 9, 2]), (2, [7]), (2, list(range(10)))]  # the last one is longer than the context
    with jax.log_compiles():
        sample = greedy_sampler(model, 12, 32, params(0))
        got = [sample(params(seed), prompt) for seed, prompt in cases]
    assert got == [naive(params(seed), prompt) for seed, prompt in cases]
    assert len(set(got[0])) > 3  # the window slides: a test that could fail
    assert sum("Compiling jit(continuation)" in r.getMessage() for r in caplog.records) == 1
    # a window that holds the prompt and the continuation: the same tokens, from 3 positions instead of 8
    assert greedy_sampler(model, 2, 32, params(0), window=3)(params(1), [5]) == naive(params(1), [5])[:2]


def test_greedy_sample_draws_only_ids_the_tokenizer_can_decode():
    model = build_model(tiny_model(tie_embeddings=False))
    flat = flax.traverse_util.flatten_dict(random_params(model, np.zeros((1, 4), np.int32))["params"], sep="/")
    # the final norm outputs ones, and the head scores ids 20.. (past a 20-id tokenizer) above all others
    flat["decoder/final_norm/scale"] = jnp.zeros_like(flat["decoder/final_norm/scale"])
    flat["decoder/final_norm/bias"] = jnp.ones_like(flat["decoder/final_norm/bias"])
    flat["embedder/head/kernel"] = flat["embedder/head/kernel"].at[:, 20:].set(1.0)
    logits_V = np.ones(16) @ np.asarray(flat["embedder/head/kernel"])
    assert np.argmax(logits_V) == 20  # the model's choice: an id the tokenizer does not have
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    sample = greedy_sampler(model, 4, 20, params)(params, [1])
    assert sample == [int(np.argmax(logits_V[:20]))] * 4


def test_rows_of_a_run_killed_before_its_first_checkpoint_are_not_kept_beside_the_new_ones(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"time": 1.0, "step": s, "loss": 9.0}) + "\n" for s in (5, 10))
    )
    cfg = load_config(ROOT / "configs/shakespeare_char.yaml", tiny_run(tmp_path, "train.steps=10"))
    train(cfg, run, quiet=True)
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [5, 10] and all(r["loss"] != 9.0 for r in rows)


@pytest.mark.slow  # 10 s: a whole run with two evaluations
def test_the_steps_and_the_evaluation_compile_during_start_up_and_never_after(tmp_path, monkeypatch, caplog):
    end_start_up = loop._end_start_up

    def marked(*args):
        end_start_up(*args)
        logging.getLogger(__name__).warning("start-up over")

    monkeypatch.setattr(loop, "_end_start_up", marked)
    cfg = load_config(
        ROOT / "configs/shakespeare_char.yaml",
        tiny_run(tmp_path, "train.steps=4", "train.eval_every=2", "train.log_every=2"),
    )
    jax.config.update("jax_log_compiles", True)  # for every thread: the evaluation compiles in one of its own
    try:
        train(cfg, tmp_path / "run", quiet=True)
    finally:
        jax.config.update("jax_log_compiles", False)
    messages = [r.getMessage() for r in caplog.records]
    over = messages.index("start-up over")
    steps = ("Compiling jit(train_step)", "Compiling jit(eval_step)", "Compiling jit(continuation)")
    assert sum(m.startswith(steps) for m in messages[:over]) == 3, messages[:over]
    assert not [m for m in messages[over:] if m.startswith(steps)]  # two evaluations, no compilation


@pytest.mark.slow  # 30 s: a run in this process and one in a process of its own
def test_a_run_on_two_local_devices_evaluates_samples_and_matches_one_device(tmp_path):
    overrides = tiny_run(tmp_path, "train.steps=4", "train.eval_every=2", "train.log_every=2")
    one = train(load_config(ROOT / "configs/shakespeare_char.yaml", overrides), tmp_path / "one", quiet=True)
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2"), "JAX_PLATFORMS": "cpu"}
    out = train_py(tmp_path / "two", overrides, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on a data 2 x fsdp 1 mesh of 2 device(s) in 1 process(es)" in out.stderr
    evaluations = [r for r in read_metrics(tmp_path / "two") if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [2, 4] and out.stderr.count("sample: ") == 2
    np.testing.assert_allclose(evaluations[-1]["val_loss"], one.last_eval["val_loss"], rtol=1e-4)


def test_evaluation_rows_carry_bits_per_byte_and_per_character_of_the_evaluated_text(tmp_path):
    (tmp_path / "corpus.txt").write_text("Où est le café? Le thé est là, 中文 aussi.\n" * 80)  # tiny_run keeps it
    cfg = load_config(ROOT / "configs/shakespeare_char.yaml", tiny_run(tmp_path, "train.steps=2", "train.eval_every=2"))
    result = train(cfg, tmp_path / "run", quiet=True)
    [row] = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    # the evaluation's batches, and the text of their targets (one document: no eos between them)
    [dataset] = (tmp_path / "datasets").iterdir()
    targets = np.concatenate(
        [
            b["targets"].ravel()
            for b in eval_batches(dataset, cfg.train.batch_size, cfg.train.seq_len, cfg.train.eval_batches)
        ]
    )
    text = Tokenizer.load(dataset).decode(targets)
    loss_sum = row["val_loss"] * targets.size
    assert row["val_bpb"] == pytest.approx(loss_sum / len(text.encode()) / np.log(2), rel=1e-6)
    assert row["val_bpc"] == pytest.approx(loss_sum / len(text) / np.log(2), rel=1e-6)
    assert row["val_bpb"] < row["val_bpc"] and result.last_eval["val_bpb"] == row["val_bpb"]


def test_model_vocabulary_smaller_than_the_data_is_refused(tmp_path):
    cfg = load_config(ROOT / "configs/shakespeare_char.yaml", tiny_run(tmp_path, "model.vocab_size=10"))
    with pytest.raises(TrainingError, match=r"model.vocab_size=10 is smaller than the data set's vocabulary of \d+"):
        train(cfg, tmp_path / "run", quiet=True)


def test_remat_recomputes_to_the_same_gradients():
    x = np.random.default_rng(0).integers(0, 32, (2, 9), dtype=np.int32)
    cfg = tiny_model(num_layers=2, dropout=0.1)
    params = jax.jit(build_model(cfg).init)(jax.random.key(0), x[:, :-1])["params"]

    def grads(remat):
        model = build_model(cfg, remat=remat)

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": p}, x[:, :-1], deterministic=False, rngs={"dropout": jax.random.key(3)}),
                x[:, 1:],
            ).mean()

        return jax.jit(jax.grad(loss))(params)

    chex.assert_trees_all_close(grads(True), grads(False), atol=1e-6)


def test_bfloat16_compute_keeps_float32_master_weights(tmp_path):
    cfg = load_config(
        ROOT / "configs/shakespeare_char.yaml",
        tiny_run(tmp_path, "train.steps=10", "train.compute_dtype=bfloat16", "train.eval_every=10"),
    )
    result = train(cfg, tmp_path / "run", quiet=True)
    chex.assert_trees_all_equal_dtypes(result.params, jax.tree.map(lambda p: np.float32(0), result.params))
    assert np.isfinite(result.last_eval["val_loss"]) and result.last_eval["val_loss"] < 3.7  # log(40) = 3.69
