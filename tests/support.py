"""Helpers the tests share: tiny models and runs, corpora, `serve.py` in its process, the lab, a stand-in engine."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulm_jax.api.cli import address_in
from mulm_jax.config import Config, DataConfig, MeshConfig, ModelConfig, config_from_dict, dump_config
from mulm_jax.data.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer
from mulm_jax.infer import (
    Completion,
    InferenceError,
    LoadedModel,
    QueueFullError,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from mulm_jax.infer.engine import NUM_LOGPROBS, EngineStats, Request
from mulm_jax.infer.fairness import FairQueue
from mulm_jax.models import build_model
from mulm_jax.train.mesh import global_batch, make_mesh, on_mesh
from mulm_jax.train.step import TrainState, mesh_steps, state_placement

ROOT = Path(__file__).resolve().parent.parent


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a process a test starts: the suite's own and `flags`."""
    return " ".join([os.environ["XLA_FLAGS"], *flags])


def tiny_model(**overrides) -> ModelConfig:
    """A model small enough to compile in a fraction of a second."""
    base = dict(vocab_size=32, d_model=16, num_layers=1, num_heads=4, d_ff=32, max_seq_len=16)
    base.update(overrides)
    return config_from_dict({"model": base}).model


def random_ids(B: int, T: int, seed: int = 0, vocab: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, T), dtype=np.int32)


def fresh_state(tx: Any, params: Any, step: int = 0) -> TrainState:
    """A train state at `step` with `params` and `tx`'s initial optimizer state (dropout key 1), on the host."""
    return TrainState(
        step=np.int32(step), params=params, opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(1))
    )


class MeshSteps:
    """The run's own jitted train and eval steps over a mesh of this process's devices, for host states and
    batches: `place` puts a host state (or parameters) where the steps take it, `batch` makes the global batch."""

    def __init__(self, model, tx, accum_steps: int, pad_id, schedule, params, mesh: MeshConfig = MeshConfig()):
        self.mesh = make_mesh(mesh)
        self.placement = state_placement(fresh_state(tx, params), self.mesh)
        self.train, self.evaluate = mesh_steps(model, tx, accum_steps, pad_id, schedule, self.mesh, self.placement)

    def place(self, state: TrainState) -> TrainState:
        return on_mesh(state, self.placement)

    def place_params(self, params: Any) -> Any:
        return on_mesh(params, self.placement.params)

    def batch(self, inputs: np.ndarray, targets: np.ndarray) -> dict[str, jax.Array]:
        return global_batch({"inputs": inputs, "targets": targets}, self.mesh)


def random_params(model, *inputs, seed: int = 0, **kwargs):
    """Parameters of the right shapes drawn with numpy: no compilation of the model's initializers.

    Kernels and embeddings ~ N(0, 0.2^2) so that every input visibly changes the output; norm scales 1.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda key: model.init(key, *inputs, **kwargs), jax.random.key(0))

    def draw(path, leaf):
        if path[-1].key == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


ALPHABET = "".join(sorted("abcdefghijklmnopqrstuvwxyz .,!:\n"))  # 32 characters: ids 0..31, no end token


def loaded(seed: int = 0, tokenizer: Tokenizer | None = None, **overrides) -> LoadedModel:
    """A tiny model with random weights and a tokenizer (default: 32 characters), as inference would load a run."""
    cfg = tiny_model(**overrides)
    model = build_model(cfg)
    inputs, _ = model.window_inputs(jnp.zeros((1, 4), jnp.int32))
    params = random_params(model, *inputs, seed=seed)["params"]
    return LoadedModel(
        model=model,
        params=params,
        tokenizer=tokenizer or CharTokenizer(list(ALPHABET)),
        config=Config(model=cfg),
        step=0,
        run_dir=None,
    )


def favour(lm: LoadedModel, up: int, down: int, strength: float = 1000.0) -> LoadedModel:
    """`lm` with the embedding rows of tokens `up` and `down` set to +-strength times one direction: with tied
    embeddings, whatever the context, one of the two then has by far the largest logit."""
    table = np.array(lm.params["embedder"]["token"]["embedding"])
    direction = np.random.default_rng(0).normal(size=table.shape[1])
    table[up], table[down] = strength * direction, -strength * direction
    params = {**lm.params, "embedder": {**lm.params["embedder"], "token": {"embedding": jnp.asarray(table)}}}
    return dataclasses.replace(lm, params=params)


SP_CORPUS = (
    "The history of the city is the history of its people. The title of the book was known to all, and the "
    "people of the town read it in the evening. In the morning they went to the market, where the traders "
    "sold bread, fish and wine. "
)


def sentencepiece_tokenizer(model_type: str = "bpe") -> SentencePieceTokenizer:
    """310 pieces trained as the project trains them (byte fallback: other characters become byte pieces)."""
    docs = [SP_CORPUS.replace("the", word) for word in ("the", "a", "this", "that", "each", "one", "every")]
    return SentencePieceTokenizer.train(docs, model_type, 310)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value


SERVER_KEY = "sk-e2e-0123456789"
# A small corpus and overrides that train a tiny model on it in seconds (for tests that train over HTTP).
CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 40
TINY = {
    "model.d_model": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.d_ff": 64,
    "model.vocab_size": 64,
    "train.steps": 30,
    "train.batch_size": 8,
    "train.warmup_steps": 5,
    "train.eval_every": 15,
    "train.eval_batches": 2,
    "train.checkpoint_every": 15,
    "train.log_every": 5,
}


def free_port() -> int:
    """A port free now, for a process that must be told its port before it starts (a jax.distributed coordinator);
    a server that can print the port it bound (serve.py --port 0) is better off with that."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`serve.py` in its own process on the port the OS gives it (--port 0, read back from the line it prints), with
    its folders under `root` and the key SERVER_KEY."""

    def __init__(self, root: Path, *extra: str):
        self.root = root
        self.log = open(root / f"server-{len(list(root.glob('server-*.log')))}.log", "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "serve.py"),
                "--port",
                "0",
                "--api-key",
                SERVER_KEY,
                "--state-dir",
                str(root / "state"),
                "--runs-root",
                str(root / "runs"),
                "--datasets-dir",
                str(root / "datasets"),
                "--data-root",
                str(root / "data"),
                "--configs-dir",
                str(ROOT / "configs"),
                *extra,
            ],
            cwd=root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = wait_for(
            lambda: self._running() and address_in(Path(self.log.name).read_text()), "serve.py to bind its port", 90
        )
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {SERVER_KEY}"}, timeout=180
        )  # POST /v1/models answers once compiled: a minute on a busy machine
        wait_for(self._ready, "the server to be ready", 90)

    def _running(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"serve.py exited: {Path(self.log.name).read_text()[-2000:]}")
        return True

    def _ready(self) -> bool:
        self._running()
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, name: str) -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)
        self.http.close()
        self.log.close()


def finished_job(server: Server, path: str) -> dict:
    job = wait_for(lambda: (j := server.http.get(path).json())["state"] != "running" and j, f"{path} to finish", 180)
    assert job["state"] == "succeeded", job
    return job


def train_py(workdir: Path, overrides: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python train.py` on configs/shakespeare_char.yaml into `workdir` with `--set overrides`, without the
    compilation cache, in a process of its own under `env`; its output captured."""
    return subprocess.run(
        [sys.executable, "train.py", "--config", "configs/shakespeare_char.yaml", "--workdir", str(workdir)]
        + ["--no-compilation-cache", "--set", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# A character corpus for tiny_run's runs.
RUN_CORPUS = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
) * 60


def tiny_run(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a run that trains in seconds on a small character corpus written to tmp_path."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(RUN_CORPUS)
    return [
        f"data.sources=[{corpus}]",
        "data.tokenizer=char",
        f"data.out_dir={tmp_path / 'datasets'}",
        "model.vocab_size=40",
        "model.d_model=32",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.d_ff=64",
        "model.max_seq_len=32",
        "train.seq_len=32",
        "train.batch_size=8",
        "train.steps=20",
        "train.warmup_steps=5",
        "train.eval_every=10",
        "train.eval_batches=2",
        "train.checkpoint_every=10",
        "train.log_every=5",
        *extra,
    ]


def pairs_run(tmp: Path, architecture: str = "encoder_decoder") -> tuple[Path, Path]:
    """A data set of seq2seq pairs (two words -> the two swapped; a quarter held out) and a run folder on it of a
    tiny model with random weights (config, tokenizer, pairs.json, one checkpoint), written without training."""
    from mulm_jax.data import assemble, read_manifest
    from mulm_jax.runs import write_pairs_record
    from mulm_jax.train.checkpoint import Checkpoints

    data = tmp / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"source": f"{a} {b}", "target": f"{b} {a}"}) + "\n"
            for a in ("ab", "cd", "ef", "gh")
            for b in ("ij", "kl", "mn")
        )
    )
    folder = assemble(DataConfig(sources=(str(data),), out_dir=str(tmp / "datasets"), val_fraction=0.25)).path
    tokenizer = Tokenizer.load(folder)
    lm = loaded(architecture=architecture, vocab_size=tokenizer.vocab_size, max_seq_len=32)
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(Config(model=lm.config.model, data=DataConfig(dataset=str(folder)))))
    tokenizer.save(run)
    write_pairs_record(run, read_manifest(folder))
    checkpoints = Checkpoints(run, keep=1)
    checkpoints.save(TrainState(step=np.int32(3), params=lm.params, opt_state={}, rng=np.zeros(2, np.uint32)), {})
    checkpoints.close()
    return folder, run


def naive_rope(x_TxHxDh, theta=10000.0):
    """Rotate-half RoPE at positions 0..T-1, written from the formula."""
    T, _, Dh = x_TxHxDh.shape
    half = Dh // 2
    angle_TxF = np.arange(T)[:, None] * theta ** (-np.arange(half) * 2.0 / Dh)[None, :]
    cos, sin = np.cos(angle_TxF)[:, None, :], np.sin(angle_TxF)[:, None, :]
    a, b = x_TxHxDh[..., :half], x_TxHxDh[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


# A chat template of the Hugging Face kind, and a small corpus with spaces, tabs and non-ASCII text.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('system only first') }}{% endif %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def hf_corpus() -> list[str]:
    return [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "Ünïcödé café naïve 日本語 🎉",
        "  spaces \t\n" * 4,
        "Hello world, hello there; numbers 12345 67890.",
    ] * 5


def byte_level_tokenizer(folder) -> None:
    """GPT-2's kind: byte-level BPE, with an added token and a chat template."""
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(
        hf_corpus(),
        tokenizers.trainers.BpeTrainer(
            vocab_size=290,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.add_tokens(["<extra>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


CHROMIUM = "/usr/bin/chromium"
# No network here: nothing in the background may try to reach one.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY_ITEM = "mulm-lab-api-key"  # where the page keeps the key (api.js)


def require_browser() -> None:
    """Skip without Chromium or playwright, unless MULM_REQUIRE_BROWSER=1 makes that a failure."""
    missing = None
    if not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)):
        missing = f"{CHROMIUM} is not installed (`make chromium` installs Debian's package)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (requirements-test.txt)"
    if missing and os.environ.get("MULM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MULM_REQUIRE_BROWSER=1 but {missing}")
    if missing:
        pytest.skip(missing)


class Lab:
    """A tab on the lab that records the console's errors and saves screenshots under `shots`."""

    def __init__(self, browser, server: Server, shots: Path, key: str | None):
        self.url, self.shots = server.url + "/", shots
        self.page = browser.new_page()
        self.page.set_default_timeout(60_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        if key is not None:
            self.page.add_init_script(f"sessionStorage.setItem({json.dumps(KEY_ITEM)}, {json.dumps(key)})")

    def open(self, view: str) -> None:
        self.page.goto(f"{self.url}#{view}")
        self.page.wait_for_selector(f"body[data-shown={view}]")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    # Expressions go in as functions: the page's Content-Security-Policy forbids evaluating strings in it.
    def value(self, expression: str):
        return self.page.evaluate(f"() => ({expression})")

    def until(self, expression: str, timeout: float = 60_000) -> None:
        self.page.wait_for_function(f"() => ({expression})", timeout=timeout)

    def call(self, function: str, arg=None):
        return self.page.evaluate(function, arg)

    def fits_the_window(self) -> bool:
        return self.value("document.documentElement.scrollWidth <= window.innerWidth")

    def colours(self, canvas_id: str) -> set[str]:
        """The colours ("r,g,b") drawn on a canvas of the page."""
        return set(self.call(CANVAS_COLOURS, canvas_id))


CANVAS_COLOURS = """id => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) colours.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
  return [...colours];
}"""


# ---- a stand-in engine for the API's tests -------------------------------------------------------------------

LN2 = math.log(2.0)


class StandInRequest(Request):
    """The engine's own Request (its delivery: events, batches, result), with what the stand-in tracks of its text."""

    def __init__(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, seed: int, owner: Optional[str] = None
    ):
        super().__init__(request_id, prompt_ids, params, seed, on_token=None, owner=owner)
        self.text = ""  # the completion's text so far, stop strings included
        self.shown = 0  # of `text`, the part sent as TokenEvents
        self.logprobs: list[TokenLogprob] = []


class StandInEngine:
    """The engine the API's routes use, with a model worked out by hand instead of one compiled: after token t
    comes token t + k (mod V) with probability 2^-k (k = 1 .. V - 1; t itself takes the remaining 2^-(V-1)).
    Greedy decoding (temperature 0) steps by k = 1, so after "hello" with the 32-character ALPHABET come "pqrst",
    and after the chat prompt's "assistant:" come "abcd..."; a sampled sequence steps by k = 1 + seed % 4. Each
    token's log-probability is -k ln 2 and its alternatives are k = 1, 2, ...; stop strings end the text where
    they start, max_tokens ends it with "length". Requests wait in a queue of max_queue for one of `slots` slots,
    admitted fairly between owners as the engine admits them (infer.fairness); every step gives each running request
    one token. Clear `stepping` to hold the steps."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        slots: int = 4,
        max_queue: int = 64,
        int8: bool = False,
        num_logprobs: int = NUM_LOGPROBS,
        reserved_slots: int = 0,
    ):
        cfg = loaded.config.model
        self.loaded, self.tokenizer, self.params = loaded, loaded.tokenizer, loaded.params
        self.max_len = cfg.max_seq_len
        self.vocab_size = min(cfg.vocab_size, self.tokenizer.vocab_size)
        self.slots, self.max_queue, self.int8, self.num_logprobs = slots, max_queue, int8, num_logprobs
        self.stepping = threading.Event()
        self.stepping.set()
        self.generated = 0
        self._running: list[StandInRequest] = []
        self._waiting = FairQueue(reserved_slots)
        self._lock = threading.Condition()
        self._ids = itertools.count()
        self._seeds = np.random.default_rng(0)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def warmup(self) -> None:
        pass  # nothing to compile

    def start(self) -> "StandInEngine":
        self._thread = threading.Thread(target=self._run, name="stand-in-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def tokenize(self, prompt: str | Sequence[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise InferenceError("the prompt is empty")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InferenceError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams = SamplingParams(),
        *,
        request_id: Optional[str] = None,
        owner: Optional[str] = None,
    ) -> StandInRequest:
        params.validate(self.num_logprobs)
        ids = self.tokenize(prompt)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            seed = params.seed if params.seed is not None else int(self._seeds.integers(2**31))
            request = StandInRequest(request_id or f"req-{next(self._ids)}", ids, params, seed, owner)
            self._waiting.append(request)
            self._lock.notify_all()
        return request

    def generate(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams()) -> Completion:
        return self.submit(prompt, params).result(60)

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                slots=self.slots,
                active=len(self._running),
                waiting=len(self._waiting),
                compilations=0,
                generated_tokens=self.generated,
            )

    def step_size(self, request: StandInRequest) -> int:
        return 1 if request.params.temperature == 0 else 1 + request.seed % 4

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or self._waiting or self._running)
                if self._stopping:
                    break
                while (
                    admitted := self._waiting.pop(
                        self.slots - len(self._running), Counter(r.owner for r in self._running)
                    )
                ) is not None:
                    self._running.append(admitted)
                running = list(self._running)
            if not self.stepping.wait(0.01):
                continue
            for request in running:
                if request.cancelled:
                    self._finish(request, "cancelled")
                else:
                    self._step(request)
        with self._lock:
            left, self._running = self._running + list(self._waiting), []
            self._waiting.clear()
        for request in left:
            self._finish(request, "cancelled")

    def _step(self, request: StandInRequest) -> None:
        last = (request.token_ids or request.prompt_ids)[-1]
        k = self.step_size(request)
        token = (last + k) % self.vocab_size
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        request.token_ids.append(token)
        self.generated += 1
        piece = self.tokenizer.decode([token])
        request.text += piece
        logprob = None
        if request.params.logprobs is not None:
            top = tuple(
                ((last + j) % self.vocab_size, self.tokenizer.decode([(last + j) % self.vocab_size]), -j * LN2)
                for j in range(1, request.params.logprobs + 1)
            )
            logprob = TokenLogprob(token, piece, -k * LN2, top)
            request.logprobs.append(logprob)
        stops = [(request.text.find(s), s) for s in request.params.stop if s in request.text]
        if stops:
            request.text = request.text[: min(stops)[0]]
        length = len(request.token_ids) >= request.params.max_tokens
        # hold back text that may begin a stop string, as the engine does
        held = (
            0
            if stops or length
            else max(
                [n for s in request.params.stop for n in range(1, len(s)) if request.text.endswith(s[:n])], default=0
            )
        )
        shown = request.text[request.shown : len(request.text) - held]
        request.shown += len(shown)
        request._publish(TokenEvent(request.id, len(request.token_ids) - 1, token, shown, logprob))
        if stops or length:
            self._finish(request, "stop" if stops else "length")

    def _finish(self, request: StandInRequest, reason: str) -> None:
        with self._lock:
            if request in self._running:
                self._running.remove(request)
        first = None if request.first_token_at is None else request.first_token_at - request.submitted
        request._publish(
            completion=Completion(
                request_id=request.id,
                text=request.text,
                token_ids=tuple(request.token_ids),
                finish_reason=reason,
                prompt_tokens=len(request.prompt_ids),
                logprobs=tuple(request.logprobs) if request.params.logprobs is not None else None,
                time_to_first_token_s=first,
            )
        )
