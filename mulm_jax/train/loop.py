"""The training run: data, model, the steps on a device mesh, evaluation, metrics, checkpoints and exact resume in a run folder."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import functools
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from mulm_jax.config import Config, TrainConfig, config_from_dict, dump_config
from mulm_jax.data import DataError, Tokenizer, eval_batches, make_loader, prepare_dataset, read_manifest
from mulm_jax.data.loader import batch_shapes, check_examples_fit, load_pairs
from mulm_jax.errors import MulmError
from mulm_jax.models import build_model
from mulm_jax.runs import config_path, is_run, write_pairs_record, write_run_files
from mulm_jax.startup import Phases
from mulm_jax.train.checkpoint import Checkpoints
from mulm_jax.train.induction import best_head, induction_program
from mulm_jax.train.init_from import RECORD, start_from
from mulm_jax.train.metrics import MetricsWriter, Progress
from mulm_jax.train.optimizer import make_optimizer, make_schedule
from mulm_jax.train.sample import greedy_sampler
from mulm_jax.train.mesh import (
    BATCH,
    bytes_per_device,
    global_batch,
    make_mesh,
    on_mesh,
    rows_per_device,
    shaped,
    to_host,
)
from mulm_jax.train.step import TrainState, mesh_steps, state_placement


@dataclasses.dataclass
class RunResult:
    step: int  # optimizer steps taken when the run ended
    last_eval: dict[str, Any]  # the last evaluation row (empty if none ran)
    params: Any  # the final parameters, on the host


class TrainingError(MulmError):
    """A run that cannot start or must stop: a config mismatch, a diverged loss, an impossible batch split."""


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# train settings that set only the length and cadence of a run, or where it runs: a resumed run may change them
RESUMABLE_CHANGES = ("steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every", "mesh")


def check_run_config(workdir: Path, cfg: Config) -> Optional[Config]:
    """The config of the run in `workdir` (None for a new folder), when `cfg` may continue that run.

    A run folder belongs to one config: only RESUMABLE_CHANGES of its train section may change on resume; any
    other difference stops with that difference shown.
    """
    if not is_run(workdir):
        return None
    saved = config_from_dict(yaml.safe_load(config_path(workdir).read_text()))
    cadence = {name: getattr(cfg.train, name) for name in RESUMABLE_CHANGES}
    same_cadence = dataclasses.replace(saved, train=dataclasses.replace(saved.train, **cadence))
    if any(getattr(same_cadence, part) != getattr(cfg, part) for part in ("model", "data", "train")):  # not `serve`
        diff = "\n".join(
            difflib.unified_diff(
                dump_config(same_cadence).splitlines(),
                dump_config(cfg).splitlines(),
                "config in run folder",
                "config given now",
                lineterm="",
                n=0,
            )
        )
        raise TrainingError(
            f"{workdir} holds a run of a different config; use another --workdir or the same "
            f"config (only train.{', train.'.join(RESUMABLE_CHANGES)} may change). "
            f"Difference:\n{diff}"
        )
    return saved


def resume_notice(saved: TrainConfig, tc: TrainConfig, step: int) -> str:
    """What a run resumed at `step` changes of its length and cadence, and what that does to the learning rate
    ('' when nothing changes)."""
    changes = [
        f"train.{name}: {getattr(saved, name)} -> {getattr(tc, name)}"
        for name in RESUMABLE_CHANGES
        if getattr(saved, name) != getattr(tc, name)
    ]
    if not changes:
        return ""
    notice = "changed on resume: " + ", ".join(changes)
    if saved.steps != tc.steps and tc.schedule != "constant":
        before, after = float(make_schedule(saved)(step)), float(make_schedule(tc)(step))
        notice += (
            f"\n  the {tc.schedule} learning-rate decay to min_lr={tc.min_lr:g} now ends at step {tc.steps} "
            f"instead of {saved.steps}: at step {step} the learning rate is {after:.4g} (it was {before:.4g})"
        )
    if step >= tc.steps:
        notice += f"\n  the run is already at step {step} >= train.steps={tc.steps}: nothing to train"
    return notice


class _StopSignal:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "_StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


STEP_COMPILE = "train step compile (rest)"  # what is left of it once the phases it runs beside are done
FIRST_STEP = "first step"  # the last start-up phase
SAMPLE_PROMPT = "\n"  # each evaluation prints the greedy continuation of this text's first token (of pairs: of the
SAMPLE_TOKENS = 64  # first validation example's prompt), this many tokens long


def _sample_prompt(dataset_dir: Path, tokenizer: Tokenizer) -> tuple[list[int], Optional[int]]:
    """The ids an evaluation's sample continues, and the id it ends at: of text, SAMPLE_PROMPT's first token (where
    the vocabulary has none, as of generated text without newlines: the end-of-document id) and none; of pairs,
    the untrained start (the prompt) of the first validation example and the end-of-text id."""
    manifest = read_manifest(dataset_dir)
    if manifest.get("kind", "text") == "text":
        try:
            return tokenizer.encode(SAMPLE_PROMPT)[:1], None
        except DataError:
            return [tokenizer.eos_id or 0], None
    ids, mask = load_pairs(dataset_dir, "val" if manifest["pairs"]["val_examples"] else "train").example(0)
    return ids[: int(np.argmax(mask))].tolist(), tokenizer.eos_id


def _prepare_data(cfg: Config, workdir: Path, lead: bool) -> tuple[Path, Tokenizer, Optional[int]]:
    """The data set's folder (assembled if needed), its tokenizer, checked against the model's vocabulary, and the
    source length of its batches (pairs for an encoder-decoder; else None), its examples checked to fit; process 0
    then copies the tokenizer and the config (and what a run on pairs generates from) into the run folder."""
    dataset_dir = prepare_dataset(cfg.data)
    tokenizer = Tokenizer.load(dataset_dir)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise TrainingError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the data set's vocabulary "
            f"of {tokenizer.vocab_size} ({dataset_dir}); set model.vocab_size >= "
            f"{tokenizer.vocab_size}"
        )
    manifest = read_manifest(dataset_dir)
    source_len = _source_length(cfg, manifest)
    check_examples_fit(
        dataset_dir,
        _sequence_length(cfg),
        source_len,
        seq_len_name=f"train.seq_len={cfg.train.seq_len}"
        if cfg.train.seq_len
        else f"train.seq_len unset: model.max_seq_len={cfg.model.max_seq_len}",
        source_len_name=f"train.source_len={cfg.train.source_len}"
        if cfg.train.source_len
        else f"train.source_len unset: model.max_seq_len={cfg.model.max_seq_len}",
    )
    if lead:
        write_run_files(workdir, cfg, tokenizer)
        if manifest.get("kind", "text") != "text":
            write_pairs_record(workdir, manifest)
    return dataset_dir, tokenizer, source_len


def _source_length(cfg: Config, manifest: dict) -> Optional[int]:
    """The sources' length in an encoder-decoder's batches of pairs: train.source_len (default: the model's context),
    checked to fit the context; None for a decoder, or for text (whose windows the model splits itself)."""
    if manifest.get("kind", "text") == "text" or cfg.model.architecture != "encoder_decoder":
        return None
    source_len = cfg.train.source_len or cfg.model.max_seq_len
    if source_len > cfg.model.max_seq_len:
        raise TrainingError(
            f"train.source_len={source_len} is longer than the context model.max_seq_len={cfg.model.max_seq_len}"
        )
    return source_len


def _sequence_length(cfg: Config) -> int:
    """train.seq_len (default: the model's context), checked to fit the context."""
    seq_len = cfg.train.seq_len or cfg.model.max_seq_len
    if seq_len > cfg.model.max_seq_len:
        raise TrainingError(
            f"train.seq_len={seq_len} is longer than the context model.max_seq_len={cfg.model.max_seq_len}"
        )
    return seq_len


@dataclasses.dataclass(frozen=True)
class RunSteps:
    """A config's model, optimizer, mesh and jitted steps, as the run trains with them (and the benchmarks time)."""

    mesh: Mesh
    model: Any
    tx: Any
    fresh_state: Callable[[], TrainState]  # the state at step 0 (freshly initialised), jitted to `placement`
    placement: TrainState  # where each array of the state lives on the mesh
    state_shapes: TrainState  # the placed state's ShapeDtypeStructs: what the steps are compiled for
    train_step: Any  # jitted (state, global batch) -> (state, metrics); the state donated
    eval_step: Any  # jitted (params, global batch) -> token sums


def run_steps(cfg: Config, pad_id: Optional[int], seq_len: int) -> RunSteps:
    """The run's steps for `cfg` on the mesh of train.mesh (nothing compiled or allocated yet)."""
    tc = cfg.train
    model = build_model(dataclasses.replace(cfg.model, dtype=tc.compute_dtype), remat=tc.remat)
    tx = make_optimizer(tc)

    def fresh_state() -> TrainState:
        init_key, state_key = jax.random.split(jax.random.key(tc.seed))
        init_inputs, _ = model.window_inputs(jnp.zeros((1, seq_len), jnp.int32))
        params = model.init(init_key, *init_inputs)["params"]
        return TrainState(
            step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=jax.random.key_data(state_key)
        )

    state = jax.eval_shape(fresh_state)
    mesh = make_mesh(tc.mesh, replica_bytes=bytes_per_device(state))
    placement = state_placement(state, mesh)
    train_step, eval_step = mesh_steps(model, tx, tc.grad_accum_steps, pad_id, make_schedule(tc), mesh, placement)
    return RunSteps(
        mesh,
        model,
        tx,
        jax.jit(fresh_state, out_shardings=placement),
        placement,
        shaped(state, placement),
        train_step,
        eval_step,
    )


def _compile_train_step(
    train_step: Any, state_shapes: TrainState, mesh: Mesh, batch: dict[str, tuple[tuple[int, ...], Any]]
) -> Any:
    """The train step compiled for the placed state and the global batches the loop will pass (`batch`: the
    loader's arrays, name -> (shape, dtype), at the global batch size; rows split over the mesh): run beside model
    init and the rest of start-up, it needs only shapes. The loop calls this program itself, so nothing compiles on
    the first step."""
    return train_step.lower(state_shapes, _batch_structs(batch, mesh)).compile()


def _batch_structs(batch: dict[str, tuple[tuple[int, ...], Any]], mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, BATCH))
        for name, (shape, dtype) in batch.items()
    }


@dataclasses.dataclass
class _Run:
    """What the steps of a run share once it is set up."""

    cfg: Config
    workdir: Path
    lead: bool
    mesh: Mesh
    seq_len: int
    model: Any
    tokenizer: Tokenizer
    loader: Any  # the train split's checkpointable iterator
    evaluation: list[dict[str, np.ndarray]]  # the fixed evaluation batches of this process
    sample: tuple[list[int], Optional[int]]  # the ids each evaluation's greedy sample (of a decoder) continues,
    # and the id that ends it (None: SAMPLE_TOKENS of them)
    checkpoints: Checkpoints
    metrics: MetricsWriter
    progress: Progress


def _restore_or_start_from(
    run: _Run,
    state: TrainState,
    tx: Any,
    placement: TrainState,
    saved: Optional[Config],
    init_from: Optional[str],
    extend_positions: bool,
) -> TrainState:
    """The run's newest checkpoint (with the data iterator's position) if it has one, else the parameters of
    `init_from` if given, else `state`."""
    restored = run.checkpoints.restore_latest(state)
    if restored is not None:
        state, data_state = restored
        run.loader.set_state(data_state)
        run.progress.message(f"resumed from step {int(state.step)} in {run.workdir}")
        if saved is not None and (notice := resume_notice(saved.train, run.cfg.train, int(state.step))):
            run.progress.message(notice)
    elif init_from is not None:
        params, record = start_from(init_from, to_host(state.params), run.tokenizer, extend_positions)
        params = on_mesh(params, placement.params)
        state = state.replace(params=params, opt_state=jax.jit(tx.init, out_shardings=placement.opt_state)(params))
        if run.lead:
            _write_text_atomically(run.workdir / RECORD, json.dumps(record, indent=1) + "\n")
        run.progress.message(f"initialised from {record['run']} at step {record['step']}")
    return state


def _compile_evaluation(
    run: _Run, compiler: concurrent.futures.Executor, eval_step: Any, params: Any
) -> concurrent.futures.Future:
    """Compile the evaluation's programs on `compiler`'s thread, beside the first training step (an XLA
    compilation releases the GIL), so that start-up holds all compilation and no evaluation stops the run to
    compile: the eval step for these batches and, for a decoder, the sampler and the induction scores. `params`: the
    placed parameters' ShapeDtypeStructs. Returns (eval program or None, sampler or None, induction or None)."""

    def compile_all() -> tuple[Any, Optional[Callable], Optional[Callable]]:
        evaluate = None
        if run.evaluation:  # the global batch of these per-process batches
            batch = {
                name: ((a.shape[0] * jax.process_count(), *a.shape[1:]), a.dtype)
                for name, a in run.evaluation[0].items()
            }
            evaluate = eval_step.lower(params, _batch_structs(batch, run.mesh)).compile()
        sampler = None
        if run.cfg.model.architecture == "decoder":  # every process runs it: the parameters span them all
            sampler = greedy_sampler(
                run.model, SAMPLE_TOKENS, run.tokenizer.vocab_size, params, window=len(run.sample[0]) + SAMPLE_TOKENS
            )
        induction = induction_program(run.cfg.model, run.tokenizer.vocab_size, params, run.mesh)
        return evaluate, sampler, induction

    return compiler.submit(compile_all)


def _evaluated_text(run: _Run) -> Optional[tuple[int, int]]:
    """The UTF-8 bytes and characters of the text of the targets the evaluation scores (as batch_sums picks them:
    those the model predicts, of pairs those the loss mask marks; pad ids have none), over every process; None when
    an id has no fixed length (an unknown character) or the tokenizer gives none (Hugging Face's)."""
    lengths = run.tokenizer.token_lengths()
    if lengths is None:
        return None
    total = np.zeros(3, np.int64)  # bytes, characters, batches with an id of no length
    for batch in run.evaluation:
        predicted = slice(None) if "source" in batch else run.model.window_inputs(batch["inputs"])[1]
        scored = batch["loss_mask"][:, predicted] if "loss_mask" in batch else slice(None)
        counted = lengths.count(batch["targets"][:, predicted][scored], batch["inputs"][:, predicted][scored])
        total += (0, 0, 1) if counted is None else (*counted, 0)
    if jax.process_count() > 1:
        total = multihost_utils.process_allgather(total).sum(0)
    return None if total[2] else (int(total[0]), int(total[1]))


def _evaluate(
    run: _Run, programs: tuple[Any, Optional[Callable], Optional[Callable]], params: Any, step: int
) -> dict[str, Any]:
    """The evaluation row at `step`: loss and perplexity over the evaluation batches of every process, the summed
    loss in bits per byte and per character of their text (where the tokenizer gives each id's length), of a
    decoder the best head's induction score and a greedy sample, and the seconds it took."""
    evaluate, sampler, induction = programs
    t_eval = time.time()
    sums = {"loss_sum": 0.0, "count": 0.0}
    for batch in run.evaluation:
        out = jax.device_get(evaluate(params, global_batch(batch, run.mesh)))
        sums = {k: sums[k] + float(out[k]) for k in sums}
    val_loss = sums["loss_sum"] / max(sums["count"], 1.0)
    row = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
    if (text := _evaluated_text(run)) and all(text):
        row["val_bpb"], row["val_bpc"] = (sums["loss_sum"] / n / math.log(2) for n in text)
    if induction is not None:
        row.update(best_head(induction(params)))
    if sampler is not None:
        ids = sampler(params, run.sample[0])
        row["sample"] = run.tokenizer.decode(ids[: ids.index(run.sample[1])] if run.sample[1] in ids else ids)
    row["eval_s"] = time.time() - t_eval
    return row


def _save(run: _Run, state: TrainState, val_loss: Optional[float]) -> None:
    """A checkpoint of the state and the data iterator's position; a stop signal arriving mid-write is held until
    the checkpoint is complete, then handled as usual."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        run.checkpoints.save(state, run.loader.get_state(), val_loss)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _Throughput:
    """Tokens per second over the steps since the last reading; evaluation and saving are kept out by `restart`."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.restart()

    def restart(self) -> None:
        self.since, self.steps = time.time(), 0

    def read(self) -> tuple[float, float]:
        """(tokens per second, seconds per step) since the last reading or restart; then restarts."""
        elapsed, steps = time.time() - self.since, self.steps
        self.restart()
        return self.tokens_per_step * steps / max(elapsed, 1e-9), elapsed / max(steps, 1)


def _log_steps(run: _Run, pending: list[dict[str, Any]], step: int, throughput: _Throughput) -> None:
    """Fetch the metrics of the steps since the last log (one transfer), stop on a non-finite loss, and write the
    last step's row and progress line."""
    rows = jax.device_get(pending)
    pending.clear()
    tokens_per_sec, sec_per_step = throughput.read()
    last = rows[-1]
    if not all(math.isfinite(float(r["loss"])) for r in rows):
        raise TrainingError(
            f"the training loss became {float(last['loss'])} at step {step}; stopping. The last good checkpoint is "
            f"kept in {run.workdir / 'checkpoints'} (steps {run.checkpoints.steps()}). Try a lower train.lr, "
            f"train.grad_clip > 0, or float32 compute."
        )
    run.metrics.write(
        {
            "step": step,
            "loss": float(last["loss"]),
            "accuracy": float(last["accuracy"]),
            "lr": float(last["lr"]),
            "grad_norm": float(last["grad_norm"]),
            "tokens_per_sec": tokens_per_sec,
        }
    )
    run.progress.update(step, float(last["loss"]), tokens_per_sec, sec_per_step)


def _end_start_up(
    run: _Run,
    evaluation_programs: concurrent.futures.Future,
    timing: Phases,
    phases: Optional[Phases],
    t_start: float,
    t_loop: float,
    step: int,
    first_metrics: Any,
) -> None:
    """Start-up ends with the first step and the evaluation's compiling: write and print its time."""
    timing.mark(FIRST_STEP, first_metrics)
    evaluation_programs.result()
    now = time.time()
    run.metrics.write({"step": step, "startup_s": now - t_start, "first_step_s": now - t_loop})
    run.progress.message(
        f"step {step} done {now - t_start:.1f}s after start ({now - t_loop:.1f}s of it running that "
        f"step and, beside it, compiling the evaluation's programs)"
    )
    if phases is not None:
        run.progress.message(f"start-up: {phases.line()}")


def _train_steps(
    run: _Run,
    state: TrainState,
    step: int,
    train_step: Any,
    evaluation_programs: concurrent.futures.Future,
    end_start_up: Callable[[int, Any], None],
) -> tuple[TrainState, int, dict[str, Any]]:
    """Steps from `step` to train.steps, with logging, evaluation and checkpoints at their cadence; a stop signal
    saves and ends the run after the current step. Returns (state, step reached, last evaluation row)."""
    tc = run.cfg.train
    last_eval: dict[str, Any] = {}
    pending: list[dict[str, Any]] = []  # metrics of the steps since the last log, left on the device till then
    throughput = _Throughput(tc.batch_size * run.seq_len)
    first = True
    with _StopSignal() as stop:
        while step < tc.steps:
            state, step_metrics = train_step(state, global_batch(next(run.loader), run.mesh))
            step += 1
            if first:
                end_start_up(step, step_metrics)
                first = False
            throughput.steps += 1
            pending.append(step_metrics)
            at_eval = step % tc.eval_every == 0 or step == tc.steps
            stopping = stop.received is not None  # read once: a signal may land anywhere in this iteration
            at_checkpoint = step % tc.checkpoint_every == 0 or step == tc.steps or stopping
            if step % tc.log_every == 0 or at_eval or at_checkpoint:
                _log_steps(run, pending, step, throughput)
            val_loss = None
            if at_eval:
                last_eval = _evaluate(run, evaluation_programs.result(), state.params, step)
                val_loss = last_eval["val_loss"]
                run.metrics.write({k: v for k, v in last_eval.items() if k != "sample"})
                run.progress.message(
                    f"step {step}: val_loss {val_loss:.4f}  val_ppl {last_eval['val_ppl']:.2f}  "
                    + (
                        f"induction {last_eval['val_induction']:.2f} (head {last_eval['val_induction_head']})  "
                        if "val_induction" in last_eval
                        else ""
                    )
                    + f"({last_eval['eval_s']:.1f}s)"
                    + (f"\n  sample: {last_eval['sample']!r}" if "sample" in last_eval else "")
                )
            if at_checkpoint:
                _save(run, state, val_loss)
            if at_eval or at_checkpoint:  # keep evaluation and saving out of the next tokens/s figure
                throughput.restart()
            if stopping:
                run.progress.message(f"stopped by signal {stop.received} at step {step}; checkpoint saved")
                break
    return state, step, last_eval


def train(
    cfg: Config,
    workdir: str | Path,
    *,
    quiet: bool = False,
    init_from: Optional[str] = None,
    extend_positions: bool = False,
    phases: Optional[Phases] = None,
) -> RunResult:
    """Train (or resume) the run in `workdir` up to train.steps (or a stop signal).

    init_from: `RUN[@STEP]`, a run whose parameters a new run starts from (see train.init_from); a run that
    resumes from its own checkpoint ignores it. phases: the start-up phases so far, to which this adds its own
    and which it prints once the first step is done.
    """
    timing = phases if phases is not None else Phases()
    t_start = time.time()
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    tc = cfg.train
    workdir.mkdir(parents=True, exist_ok=True)
    saved = check_run_config(workdir, cfg)
    dataset_dir, tokenizer, source_len = _prepare_data(cfg, workdir, lead)
    timing.mark("data preparation")

    seq_len = _sequence_length(cfg)
    rows_per_device(tc.batch_size, tc.grad_accum_steps)  # the batch must split evenly: say so before any work
    process_batch = tc.batch_size // jax.process_count()
    steps = run_steps(cfg, tokenizer.pad_id, seq_len)
    mesh = steps.mesh
    compiler = concurrent.futures.ThreadPoolExecutor(1)  # one thread: the train step, then the evaluation
    train_program = compiler.submit(
        _compile_train_step,
        steps.train_step,
        steps.state_shapes,
        mesh,
        batch_shapes(read_manifest(dataset_dir), tc.batch_size, seq_len, source_len),
    )
    state = steps.fresh_state()
    timing.mark("model and optimizer init", state)
    loader = make_loader(dataset_dir, "train", process_batch, seq_len, tc.seed, source_len=source_len)
    timing.mark("data loader")
    run = _Run(
        cfg,
        workdir,
        lead,
        mesh,
        seq_len,
        steps.model,
        tokenizer,
        loader,
        [],
        _sample_prompt(dataset_dir, tokenizer),
        Checkpoints(workdir, tc.keep_checkpoints),
        MetricsWriter(workdir, enabled=lead),
        Progress(tc.steps, enabled=lead, bar=not quiet),
    )
    state = _restore_or_start_from(run, state, steps.tx, steps.placement, saved, init_from, extend_positions)
    timing.mark("checkpoint restore", state)
    run.metrics.drop_rows_after(int(state.step))  # rows of a killed run past its checkpoint (all, if none restored)
    run.evaluation = eval_batches(dataset_dir, process_batch, seq_len, tc.eval_batches, source_len=source_len)
    timing.mark("evaluation batches")

    evaluation_programs = _compile_evaluation(run, compiler, steps.eval_step, steps.state_shapes.params)
    compiler.shutdown(wait=False)
    train_step = train_program.result()
    timing.mark(STEP_COMPILE)
    step = int(state.step)
    if lead and step == 0:
        mesh_line = " x ".join(f"{name} {size}" for name, size in mesh.shape.items())
        run.progress.message(
            f"set up in {time.time() - t_start:.1f}s; training {tc.steps} steps of "
            f"{tc.batch_size}x{seq_len} tokens on a {mesh_line} mesh of {jax.device_count()} "
            f"device(s) in {jax.process_count()} process(es)"
        )
    end_start_up = functools.partial(_end_start_up, run, evaluation_programs, timing, phases, t_start, time.time())
    state, step, last_eval = _train_steps(run, state, step, train_step, evaluation_programs, end_start_up)
    run.checkpoints.close()
    run.metrics.close()
    return RunResult(step, last_eval, to_host(state.params))
