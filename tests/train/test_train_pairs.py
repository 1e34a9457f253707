"""Training on pairs: the loss only on what the model is trained to produce (the prompt's gradient exactly zero), the
encoder-decoder reading the source, runs on pairs end to end, and a decoder fine-tuned to complete pairs (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import ROOT, fresh_state, random_params, tiny_model, tiny_run
from mulm_jax.config import TrainConfig, load_config
from mulm_jax.data.errors import DataError
from mulm_jax.infer import Engine, SamplingParams, load_model
from mulm_jax.models import build_model
from mulm_jax.runs import read_pairs_record
from mulm_jax.train.loop import train
from mulm_jax.train.mesh import MeshConfig, global_batch, make_mesh, on_mesh
from mulm_jax.train.optimizer import make_optimizer, make_schedule
from mulm_jax.train.step import batch_sums, mesh_steps, state_placement, token_loss_sums


def pair_batch(seed: int = 0, B: int = 2, T: int = 8, S: int = 0) -> dict[str, np.ndarray]:
    """A batch of pairs: each row a prompt (untrained), a completion (trained) and padding; with S, a source."""
    rng = np.random.default_rng(seed)
    batch = {
        "inputs": rng.integers(0, 32, (B, T), dtype=np.int32),
        "targets": rng.integers(0, 32, (B, T), dtype=np.int32),
        "loss_mask": np.zeros((B, T), bool),
    }
    batch["loss_mask"][0::2, 3:6] = batch["loss_mask"][1::2, 1:7] = True
    if S:  # odd rows' sources are 2 tokens shorter
        batch.update(
            source=rng.integers(0, 32, (B, S), dtype=np.int32),
            source_valid=np.arange(S)[None] < S - 2 * (np.arange(B)[:, None] % 2),
        )
    return batch


def test_the_loss_counts_only_the_targets_the_loss_mask_marks():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 32)), jnp.float32)
    batch = pair_batch()
    sums = token_loss_sums(logits, batch["targets"], pad_id=None, loss_mask_BxT=batch["loss_mask"])
    mask = batch["loss_mask"]
    only = token_loss_sums(logits[mask][None], batch["targets"][mask][None], pad_id=None)
    chex.assert_trees_all_close(sums, only, rtol=1e-6)
    assert sums["count"] == 9


@pytest.mark.parametrize(
    "architecture",
    ["decoder", pytest.param("encoder_decoder", marks=pytest.mark.slow)],  # about 30 s
)
def test_prompt_and_padding_tokens_contribute_exactly_zero_gradient(architecture):
    cfg = tiny_model(architecture=architecture, num_layers=2)
    model = build_model(cfg)
    batch = pair_batch(S=6 if architecture == "encoder_decoder" else 0)
    inputs = (batch["source"], batch["inputs"]) if "source" in batch else (batch["inputs"],)
    params = random_params(model, *inputs)["params"]

    def loss(logits, targets):  # the training loss as a function of the logits
        return token_loss_sums(logits, targets, pad_id=None, loss_mask_BxT=batch["loss_mask"])["loss_sum"]

    logits = model.apply(
        {"params": params}, *inputs, **({"src_valid_BxS": batch["source_valid"]} if "source" in batch else {})
    )
    grad = np.asarray(jax.grad(loss)(logits, batch["targets"]))
    untrained = ~batch["loss_mask"]
    assert np.all(grad[untrained] == 0.0) and np.all(np.abs(grad[~untrained]).sum(-1) > 0)

    def param_grads(targets):  # the gradient the train step takes, with other targets where nothing is trained
        return jax.grad(lambda p: batch_sums(model, p, {**batch, "targets": targets}, pad_id=None)["loss_sum"])(params)

    other = np.where(untrained, (batch["targets"] + 7) % 32, batch["targets"])
    chex.assert_trees_all_equal(param_grads(batch["targets"]), param_grads(other))


def test_the_mesh_train_step_takes_any_batch_keys_and_the_encoder_reads_the_source():
    cfg = tiny_model(architecture="encoder_decoder", num_layers=1)
    model = build_model(cfg)
    batch = pair_batch(B=4, S=6)
    params = random_params(model, batch["source"], batch["inputs"])["params"]
    tc = TrainConfig(lr=1e-2, warmup_steps=0)
    tx = make_optimizer(tc)
    mesh = make_mesh(MeshConfig())
    placement = state_placement(fresh_state(tx, params), mesh)
    train_step, eval_step = mesh_steps(model, tx, 1, None, make_schedule(tc), mesh, placement)
    sums = jax.device_get(eval_step(on_mesh(params, placement.params), global_batch(batch, mesh)))
    expected = batch_sums(model, params, batch, pad_id=None)
    chex.assert_trees_all_close(sums, expected, rtol=1e-5)
    other_source = dict(batch, source=(batch["source"] + 1) % 32)
    assert float(batch_sums(model, params, other_source, pad_id=None)["loss_sum"]) != float(expected["loss_sum"])
    _, metrics = train_step(on_mesh(fresh_state(tx, params), placement), global_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))


def write_pairs(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


WORDS = [
    "to",
    "be",
    "or",
    "not",
    "that",
    "is",
    "the",
    "tis",
    "mind",
    "sea",
    "take",
    "arms",
    "in",
    "of",
    "and",
    "whe",
    "fort",
    "slin",
    "arro",
    "trou",
    "nob",
    "ques",
    "suf",
    "ous",
]


def reversal_pairs(n: int, seed: int = 0) -> list[dict]:
    """prompt: two words and a colon; completion: the two in the other order (all of RUN_CORPUS's characters)."""
    rng = np.random.default_rng(seed)
    pairs = {tuple(rng.choice(WORDS, 2, replace=False)) for _ in range(n)}
    return [{"prompt": f"{a} {b}:", "completion": f" {b} {a}"} for a, b in sorted(pairs)]


@pytest.mark.parametrize("architecture", ["decoder", "encoder_decoder"])
def test_a_run_trains_on_pairs_and_records_them_for_generation(tmp_path, architecture):
    data = write_pairs(tmp_path / "pairs.jsonl", reversal_pairs(60))
    overrides = tiny_run(
        tmp_path,
        f"data.sources=[{data}]",
        f"model.architecture={architecture}",
        "train.steps=4",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "train.seq_len=24",
        "train.source_len=24",
    )
    result = train(load_config(ROOT / "configs/shakespeare_char.yaml", overrides), tmp_path / "run", quiet=True)
    assert result.step == 4 and np.isfinite(result.last_eval["val_loss"])
    record = read_pairs_record(tmp_path / "run")
    assert (record["kind"], record["fields"]) == ("completion", ["prompt", "completion"])
    loaded = load_model(tmp_path / "run")
    assert loaded.decoder_start == (record["decoder_start_id"] if architecture == "encoder_decoder" else None)


def test_a_pair_too_long_for_the_run_is_refused_naming_its_line_before_the_run_is_written(tmp_path):
    data = write_pairs(
        tmp_path / "pairs.jsonl", reversal_pairs(30) + [{"prompt": "to " * 20 + ":", "completion": " be"}]
    )
    overrides = tiny_run(
        tmp_path,
        f"data.sources=[{data}]",
        "model.architecture=encoder_decoder",
        "train.seq_len=16",
        "train.source_len=16",
    )
    with pytest.raises(
        DataError,
        match=r"pairs.jsonl:31: field 'prompt' has 61 tokens, more than the encoder's "
        r"16 \(train.source_len=16\)",
    ):
        train(load_config(ROOT / "configs/shakespeare_char.yaml", overrides), tmp_path / "run", quiet=True)
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.slow
def test_a_decoder_fine_tuned_on_prompt_completion_pairs_learns_to_complete_them(tmp_path):
    (tmp_path / "more.txt").write_text("To sleep, perchance to dream: ay, there's the rub.\n" * 20)
    base = tiny_run(
        tmp_path,
        f"data.sources=[{tmp_path / 'corpus.txt'},{tmp_path / 'more.txt'}]",
        "train.steps=50",
        "train.checkpoint_every=50",
        "train.eval_every=50",
    )  # two documents: the tokenizer has an eos id
    train(load_config(ROOT / "configs/shakespeare_char.yaml", base), tmp_path / "base", quiet=True)
    records = reversal_pairs(400)  # 292 of the 552 ordered pairs of words
    records = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    held_out, trained = records[:20], records[20:]
    data = write_pairs(tmp_path / "pairs.jsonl", trained)
    tune = tiny_run(
        tmp_path,
        f"data.sources=[{data}]",
        f"data.tokenizer={tmp_path / 'base'}",
        "data.val_fraction=0.05",
        "train.steps=600",
        "train.lr=3e-3",
        "train.warmup_steps=20",
        "train.eval_every=600",
        "train.checkpoint_every=600",
        "train.batch_size=32",
        "train.seq_len=32",
    )
    train(
        load_config(ROOT / "configs/shakespeare_char.yaml", tune),
        tmp_path / "tuned",
        quiet=True,
        init_from=str(tmp_path / "base"),
    )
    loaded = load_model(tmp_path / "tuned")
    with Engine(loaded, slots=8) as engine:
        outputs = [engine.generate(r["prompt"], SamplingParams(max_tokens=20, temperature=0.0)).text for r in held_out]
    right = sum(out == r["completion"] for out, r in zip(outputs, held_out))
    assert right >= 16, list(zip(outputs, [r["completion"] for r in held_out]))
