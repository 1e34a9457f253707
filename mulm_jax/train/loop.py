"""The training run: data, model, pmapped steps, evaluation, metrics, checkpoints and exact resume in a run folder."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import yaml

from mulm_jax.config import Config, TrainConfig, config_from_dict, dump_config
from mulm_jax.data import Tokenizer, eval_batches, make_loader, prepare_dataset
from mulm_jax.models import build_model
from mulm_jax.startup import Phases
from mulm_jax.train.checkpoint import Checkpoints
from mulm_jax.train.init_from import RECORD, start_from
from mulm_jax.train.metrics import MetricsWriter, Progress
from mulm_jax.train.optimizer import make_optimizer, make_schedule
from mulm_jax.train.sample import greedy_sampler
from mulm_jax.train.step import TrainState, pmapped_steps, replicate


@dataclasses.dataclass
class RunResult:
    step: int  # optimizer steps taken when the run ended
    last_eval: dict[str, Any]  # the last evaluation row (empty if none ran)
    params: Any  # the final parameters, on the host


class TrainingError(RuntimeError):
    """A run that cannot start or must stop: a config mismatch, a diverged loss, an impossible batch split."""


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# train settings that set only the length and cadence of a run: a resumed run may change them
RESUMABLE_CHANGES = ("steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every")


def check_run_config(workdir: Path, cfg: Config) -> Optional[Config]:
    """The config of the run in `workdir` (None for a new folder), when `cfg` may continue that run.

    A run folder belongs to one config: only RESUMABLE_CHANGES of its train section may change on resume; any
    other difference stops with that difference shown.
    """
    path = workdir / "config.yaml"
    if not path.exists():
        return None
    saved = config_from_dict(yaml.safe_load(path.read_text()))
    cadence = {name: getattr(cfg.train, name) for name in RESUMABLE_CHANGES}
    same_cadence = dataclasses.replace(saved, train=dataclasses.replace(saved.train, **cadence))
    if any(getattr(same_cadence, part) != getattr(cfg, part) for part in ("model", "data", "train")):  # not `serve`
        diff = "\n".join(difflib.unified_diff(dump_config(same_cadence).splitlines(), dump_config(cfg).splitlines(),
                                              "config in run folder", "config given now", lineterm="", n=0))
        raise TrainingError(f"{workdir} holds a run of a different config; use another --workdir or the same "
                            f"config (only train.{', train.'.join(RESUMABLE_CHANGES)} may change). "
                            f"Difference:\n{diff}")
    return saved


def resume_notice(saved: TrainConfig, tc: TrainConfig, step: int) -> str:
    """What a run resumed at `step` changes of its length and cadence, and what that does to the learning rate
    ('' when nothing changes)."""
    changes = [f"train.{name}: {getattr(saved, name)} -> {getattr(tc, name)}" for name in RESUMABLE_CHANGES
               if getattr(saved, name) != getattr(tc, name)]
    if not changes:
        return ""
    notice = "changed on resume: " + ", ".join(changes)
    if saved.steps != tc.steps and tc.schedule != "constant":
        before, after = float(make_schedule(saved)(step)), float(make_schedule(tc)(step))
        notice += (f"\n  the {tc.schedule} learning-rate decay to min_lr={tc.min_lr:g} now ends at step {tc.steps} "
                   f"instead of {saved.steps}: at step {step} the learning rate is {after:.4g} (it was {before:.4g})")
    if step >= tc.steps:
        notice += f"\n  the run is already at step {step} >= train.steps={tc.steps}: nothing to train"
    return notice


def _per_device_batch(global_batch: int, accum_steps: int) -> tuple[int, int]:
    """(batch per process, batch per device), checking that the global batch splits evenly."""
    processes, devices = jax.process_count(), jax.local_device_count()
    parts = processes * devices * accum_steps
    if global_batch % parts:
        raise TrainingError(
            f"train.batch_size={global_batch} does not split evenly over {processes} process(es) x {devices} "
            f"device(s) x {accum_steps} accumulation step(s)")
    return global_batch // processes, global_batch // (processes * devices)


def _shard(batch: dict[str, np.ndarray], devices: int) -> dict[str, np.ndarray]:
    return {k: v.reshape(devices, v.shape[0] // devices, *v.shape[1:]) for k, v in batch.items()}


def _unreplicate(tree: Any) -> Any:
    # Cheapest on fetched (host) arrays: on a device array, [0] is a program of its own, one dispatch per leaf.
    return jax.tree.map(lambda x: x[0], tree)


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


FIRST_STEP = "first step (compile and run)"  # the last start-up phase: the step compiles on its first call


def train(cfg: Config, workdir: str | Path, *, quiet: bool = False, init_from: Optional[str] = None,
          extend_positions: bool = False, phases: Optional[Phases] = None) -> RunResult:
    """Train (or resume) the run in `workdir` up to train.steps (or a stop signal).

    init_from: `RUN[@STEP]`, a run whose parameters a new run starts from (see train.init_from); a run that
    resumes from its own checkpoint ignores it. phases: the start-up phases so far, to which this adds its own
    and which it prints once the first step is done.
    """
    timing = phases if phases is not None else Phases()
    workdir = Path(workdir)
    t_start = time.time()
    lead = jax.process_index() == 0
    tc = cfg.train
    workdir.mkdir(parents=True, exist_ok=True)
    saved = check_run_config(workdir, cfg)

    dataset_dir = prepare_dataset(cfg.data)
    tokenizer = Tokenizer.load(dataset_dir)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise TrainingError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data set's vocabulary "
                            f"of {tokenizer.vocab_size} ({dataset_dir}); set model.vocab_size >= {tokenizer.vocab_size}")
    if lead:
        tokenizer.save(workdir)
        _write_text_atomically(workdir / "config.yaml", dump_config(cfg))
    timing.mark("data preparation")

    seq_len = tc.seq_len or cfg.model.max_seq_len
    if seq_len > cfg.model.max_seq_len:
        raise TrainingError(f"train.seq_len={seq_len} is longer than the context model.max_seq_len="
                            f"{cfg.model.max_seq_len}")
    process_batch, device_batch = _per_device_batch(tc.batch_size, tc.grad_accum_steps)
    devices = jax.local_device_count()

    model = build_model(dataclasses.replace(cfg.model, dtype=tc.compute_dtype), remat=tc.remat)
    tx = make_optimizer(tc)
    schedule = make_schedule(tc)
    key = jax.random.key(tc.seed)
    init_key, state_key = jax.random.split(key)
    dummy = np.zeros((1, seq_len), np.int32)
    init_args = (dummy[:, : seq_len // 2], dummy[:, seq_len // 2:]) if cfg.model.architecture == "encoder_decoder" \
        else (dummy,)
    params = jax.jit(model.init)(init_key, *init_args)["params"]
    timing.mark("model init", params)
    state = TrainState(step=np.int32(0), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(state_key))
    timing.mark("optimizer init", state.opt_state)

    loader = make_loader(dataset_dir, "train", process_batch, seq_len, tc.seed)
    timing.mark("data loader")
    checkpoints = Checkpoints(workdir, tc.keep_checkpoints)
    metrics = MetricsWriter(workdir, enabled=lead)
    progress = Progress(tc.steps, enabled=lead, bar=not quiet)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, data_state = restored
        loader.set_state(data_state)
        progress.message(f"resumed from step {int(state.step)} in {workdir}")
        if saved is not None and (notice := resume_notice(saved.train, tc, int(state.step))):
            progress.message(notice)
    elif init_from is not None:
        params, record = start_from(init_from, state.params, tokenizer, extend_positions)
        state = state.replace(params=params, opt_state=tx.init(params))
        if lead:
            _write_text_atomically(workdir / RECORD, json.dumps(record, indent=1) + "\n")
        progress.message(f"initialised from {record['run']} at step {record['step']}")
    timing.mark("checkpoint restore", state)
    metrics.drop_rows_after(int(state.step))  # rows of a killed run past its checkpoint (all rows, if none restored)
    evaluation = eval_batches(dataset_dir, process_batch, seq_len, tc.eval_batches)
    timing.mark("evaluation batches")

    train_step, eval_step = pmapped_steps(model, tx, tc.grad_accum_steps, tokenizer.pad_id, schedule)
    replicated = replicate(jax.device_get(state), devices)
    timing.mark("state to the host")
    step = int(state.step)
    del state

    def compile_evaluation(params_like: Any) -> tuple[Any, Any]:
        """The evaluation's programs: its step for these batches, and the sampler on process 0 of a decoder."""
        step_fn = eval_step.lower(params_like, _shard(evaluation[0], devices)).compile() if evaluation else eval_step
        sample = greedy_sampler(model, 64, tokenizer.vocab_size, _unreplicate(params_like)) \
            if lead and cfg.model.architecture == "decoder" else None
        return step_fn, sample

    # Compiled beside the first training step (an XLA compilation releases the GIL): start-up then holds all
    # compilation, and no evaluation stops the run to compile.
    compiler = concurrent.futures.ThreadPoolExecutor(1)
    evaluation_programs = compiler.submit(compile_evaluation, replicated.params)
    compiler.shutdown(wait=False)

    def evaluate() -> dict[str, Any]:
        t_eval = time.time()
        eval_fn, sample = evaluation_programs.result()
        sums = {"loss_sum": 0.0, "count": 0.0}
        for batch in evaluation:
            out = _unreplicate(jax.device_get(eval_fn(replicated.params, _shard(batch, devices))))
            sums = {k: sums[k] + float(out[k]) for k in sums}
        val_loss = sums["loss_sum"] / max(sums["count"], 1.0)
        row = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        if sample is not None:
            row["sample"] = tokenizer.decode(sample(_unreplicate(replicated.params), tokenizer.encode("\n")[:1]))
        row["eval_s"] = time.time() - t_eval
        return row

    def save(val_loss: Optional[float] = None) -> None:
        # A stop signal arriving mid-write is held until the checkpoint is complete, then handled as usual.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            checkpoints.save(_unreplicate(jax.device_get(replicated)), loader.get_state(), val_loss)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    last_eval: dict[str, Any] = {}
    tokens_per_step = tc.batch_size * seq_len
    pending: list[dict[str, Any]] = []
    t_interval, steps_in_interval = time.time(), 0
    if lead and step == 0:
        progress.message(f"set up in {time.time() - t_start:.1f}s; training {tc.steps} steps of "
                         f"{tc.batch_size}x{seq_len} tokens on {jax.process_count()} process(es) x {devices} device(s)")
    t_loop, startup_s = time.time(), None
    with _StopSignal() as stop:
        while step < tc.steps:
            batch = _shard(next(loader), devices)
            replicated, step_metrics = train_step(replicated, batch)
            step += 1
            if FIRST_STEP not in timing.seconds:
                timing.mark(FIRST_STEP, step_metrics)
                if phases is not None:
                    progress.message(f"start-up: {phases.line()}")
            if startup_s is None:  # start-up ends with the first step (compiling it) and the evaluation's compiling
                jax.block_until_ready(step_metrics)
                evaluation_programs.result()
                now = time.time()
                startup_s = now - t_start
                metrics.write({"step": step, "startup_s": startup_s, "first_step_s": now - t_loop})
                progress.message(f"step {step} done {startup_s:.1f}s after start ({now - t_loop:.1f}s of it compiling "
                                 f"and running that step)")
            steps_in_interval += 1
            pending.append(step_metrics)
            at_eval = step % tc.eval_every == 0 or step == tc.steps
            stopping = stop.received is not None  # read once: a signal may land anywhere in this iteration
            at_checkpoint = step % tc.checkpoint_every == 0 or step == tc.steps or stopping
            if step % tc.log_every == 0 or at_eval or at_checkpoint:
                rows = [_unreplicate(m) for m in jax.device_get(pending)]
                pending.clear()
                elapsed = time.time() - t_interval
                tokens_per_sec = tokens_per_step * steps_in_interval / max(elapsed, 1e-9)
                t_interval, steps_in_interval = time.time(), 0
                last = rows[-1]
                if not all(math.isfinite(float(r["loss"])) for r in rows):
                    raise TrainingError(
                        f"the training loss became {float(last['loss'])} at step {step}; stopping. The last good "
                        f"checkpoint is kept in {workdir / 'checkpoints'} (steps {checkpoints.steps()}). Try a "
                        f"lower train.lr, train.grad_clip > 0, or float32 compute.")
                metrics.write({"step": step, "loss": float(last["loss"]), "accuracy": float(last["accuracy"]),
                               "lr": float(last["lr"]), "grad_norm": float(last["grad_norm"]),
                               "tokens_per_sec": tokens_per_sec})
                progress.update(step, float(last["loss"]), tokens_per_sec, elapsed / max(len(rows), 1))
            val_loss = None
            if at_eval:
                last_eval = evaluate()
                val_loss = last_eval["val_loss"]
                metrics.write({k: v for k, v in last_eval.items() if k != "sample"})
                progress.message(f"step {step}: val_loss {val_loss:.4f}  val_ppl {last_eval['val_ppl']:.2f}  "
                                 f"({last_eval['eval_s']:.1f}s)"
                                 + (f"\n  sample: {last_eval['sample']!r}" if "sample" in last_eval else ""))
            if at_checkpoint:
                save(val_loss)
            if at_eval or at_checkpoint:  # keep evaluation and saving out of the next tokens/s figure
                t_interval = time.time()
            if stopping:
                progress.message(f"stopped by signal {stop.received} at step {step}; checkpoint saved")
                break
    checkpoints.close()
    metrics.close()
    return RunResult(step, last_eval, _unreplicate(jax.device_get(replicated.params)))
