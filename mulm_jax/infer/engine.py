"""Continuous batching: requests wait in a bounded queue, are prefilled into free slots, and advance
together, one compiled decode step for all slots, until each meets its stop condition and frees its slot.

One background thread owns the device state and dispatches the steps; a second one turns tokens into text
(infer.detokenize), so that a step never waits for it. Submission, cancellation and reading results are
thread-safe; results stream as TokenEvents (per-token callback, blocking iterator, or async iterator) and end
with a Completion.

A beam search request (num_beams > 1) takes no slot: when it reaches the head of the queue, the loop runs its whole
search (infer.beam, a program of its own) between two decode steps, then delivers its best hypothesis as if
decoded token by token.

Requests name their `owner` (the API key they came for): the next free slot goes to the owner holding the fewest
(infer.fairness), so one owner's many requests do not keep another's few waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import numpy as np

from mulm_jax.infer.beam import BeamSearch, Hypothesis
from mulm_jax.infer.decoding import SlotSteps, host_output
from mulm_jax.infer.detokenize import CompletionText
from mulm_jax.infer.fairness import FairQueue
from mulm_jax.infer.loading import InferenceError, LoadedModel
from mulm_jax.infer.sampling import SamplingArrays, SamplingParams
from mulm_jax.infer.serving import serving_weights

log = logging.getLogger(__name__)

NUM_LOGPROBS = 5  # alternatives a token's log-probabilities can list, by default (OpenAI's limit)


class QueueFullError(InferenceError):
    """The waiting queue is at its bound; the caller should retry later."""


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    text: str  # the token's share of the completion's text (see infer.detokenize; "" inside a character)
    logprob: float
    top: tuple[tuple[int, str, float], ...]  # the most likely tokens (id, text in this place, log-probability)


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    index: int  # of the token among the generated ones
    token_id: int
    text: str  # the new text shown ("" while a stop string or a character is still open)
    logprob: Optional[TokenLogprob]


@dataclass(frozen=True)
class Completion:
    request_id: str
    text: str  # decode(prompt + output) beyond decode(prompt), up to a stop string or a stop token
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (end token, stop token or stop string), "length" or "cancelled"
    prompt_tokens: int
    logprobs: Optional[tuple[TokenLogprob, ...]]
    time_to_first_token_s: Optional[float]
    hypotheses: Optional[tuple[Hypothesis, ...]] = None  # num_beams > 1: those the search kept, best (this one) first

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class Request:
    """One submitted generation. Iterate it (or `async for` over `.stream()`, or `.batches()` for what is pending at
    each wake-up) for TokenEvents; `.result()` waits for the Completion; `.cancel()` stops it and frees its slot."""

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int,
        on_token: Optional[Callable[[TokenEvent], None]],
        owner: Optional[str] = None,
    ):
        self.id, self.prompt_ids, self.params, self.seed, self.on_token = request_id, prompt_ids, params, seed, on_token
        self.owner = owner  # who it is generated for: slots are shared fairly between owners (infer.fairness)
        self.submitted = time.monotonic()
        self.cancelled = False
        self.token_ids: list[int] = []  # generated (a step or two may follow a stop string: see Completion)
        self.first_token_at: Optional[float] = None
        self.hypotheses: Optional[tuple[Hypothesis, ...]] = None  # the beam search's
        self.completion: Optional[Completion] = None
        self._ended = False  # the engine generates no more for it
        self._text: Optional[CompletionText] = None  # this and the next two: the delivery thread's
        self._ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []
        self._events: list[TokenEvent] = []
        self._cond = threading.Condition()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def done(self) -> bool:
        return self.completion is not None

    def cancel(self) -> None:
        self.cancelled = True

    def _publish(self, event: Optional[TokenEvent] = None, completion: Optional[Completion] = None) -> None:
        if event is not None and self.on_token is not None:
            try:
                self.on_token(event)
            except Exception:  # a callback's failure must not stop the engine for everyone else
                log.exception("on_token callback of request %s failed; cancelling it", self.id)
                self.cancelled = True
        with self._cond:
            if event is not None:
                self._events.append(event)
            if completion is not None:
                self.completion = completion
            waiters, self._async_waiters = self._async_waiters, []
            self._cond.notify_all()
        for loop, ready in waiters:
            loop.call_soon_threadsafe(ready.set)

    def result(self, timeout: Optional[float] = None) -> Completion:
        with self._cond:
            if not self._cond.wait_for(lambda: self.completion is not None, timeout):
                raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        return self.completion

    def __iter__(self) -> Iterator[TokenEvent]:
        for i in itertools.count():
            with self._cond:
                self._cond.wait_for(lambda: len(self._events) > i or self.completion is not None)
                if len(self._events) <= i:
                    return
                event = self._events[i]
            yield event

    async def stream(self) -> AsyncIterator[TokenEvent]:
        async for events in self.batches():
            for event in events:
                yield event

    async def batches(self) -> AsyncIterator[list[TokenEvent]]:
        """The TokenEvents in order, all those that arrived since the last wake-up in one list: a reader that falls
        behind the engine catches up in one go instead of one await per token."""
        loop = asyncio.get_running_loop()
        seen = 0
        while True:
            with self._cond:
                events = self._events[seen:]
                seen += len(events)
                if not events:
                    if self.completion is not None:
                        return
                    ready = asyncio.Event()
                    self._async_waiters.append((loop, ready))
            if events:
                yield events
            else:
                await ready.wait()


class _Result(NamedTuple):
    """What a step gave one request, passed from the loop to the delivery thread."""

    request: Request
    token_id: Optional[int]  # None: the request ended without a new token (cancelled)
    logprobs: Optional[tuple[float, list[int], list[float]]]  # the token's, the top ids and theirs
    in_text: bool  # False for a stop token, whose text is not part of the completion
    finish: Optional[str]  # the Completion's finish_reason when the loop ended the request here


@dataclass
class EngineStats:
    slots: int
    active: int
    waiting: int
    compilations: int
    generated_tokens: int
    buckets: tuple[int, ...] = field(default_factory=tuple)


class Engine:
    """Serves one loaded model with `slots` sequences decoded together.

    max_len: positions per slot (default: the model's context). max_queue: requests allowed to wait for a
    slot before submit() raises QueueFullError. int8: serve with weight-only int8 kernels (see quantize).
    reserved_slots: slots an owner already holding one may not take (infer.fairness).
    `vocab_size`: the ids both the model and the tokenizer know; a padded embedding table's further rows are
    never generated.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        slots: int = 4,
        max_len: Optional[int] = None,
        max_queue: int = 64,
        num_logprobs: int = NUM_LOGPROBS,
        int8: bool = False,
        seed: int = 0,
        reserved_slots: int = 0,
    ):
        cfg = loaded.config.model
        self.loaded, self.tokenizer = loaded, loaded.tokenizer
        self.max_len = min(max_len or cfg.max_seq_len, cfg.max_seq_len)
        self.vocab_size = min(cfg.vocab_size, self.tokenizer.vocab_size)
        if slots < 1 or max_queue < 0:
            raise InferenceError(f"slots={slots} and max_queue={max_queue}: expected slots >= 1 and max_queue >= 0")
        if not 0 <= reserved_slots < slots:
            raise InferenceError(f"reserved_slots={reserved_slots}: expected 0 <= reserved_slots < slots={slots}")
        served = serving_weights(loaded, int8)  # this backend's dtype and layout: see infer.serving
        self.params = served.params
        self.steps = SlotSteps(
            served.model,
            slots,
            self.max_len,
            num_logprobs,
            unpack_params=served.unpack,
            vocab=self.vocab_size,
            weight_first=served.weight_first,
        )
        self.beams = BeamSearch(
            served.model,
            self.max_len,
            unpack_params=served.unpack,
            vocab=self.vocab_size,
            weight_first=served.weight_first,
            compiled=self.steps.compiled,
        )
        self.max_queue, self.num_logprobs = max_queue, num_logprobs
        self._state = self.steps.init_state()
        self._slots: list[Optional[Request]] = [None] * slots  # the request each slot holds
        self._waiting = FairQueue(reserved_slots)
        self._lock = threading.Condition()
        self._ids = itertools.count()
        self._seeds = np.random.default_rng(seed)
        self._generated = 0
        self._thread: Optional[threading.Thread] = None
        self._delivery: Optional[threading.Thread] = None
        self._results: queue.SimpleQueue[Optional[list[_Result]]] = queue.SimpleQueue()
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._stopping = False
            self._delivery = threading.Thread(target=self._deliver, name="mulm-delivery", daemon=True)
            self._thread = threading.Thread(target=self._run, name="mulm-engine", daemon=True)
            self._delivery.start()
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._results.put(None)  # after the loop's last results
            self._delivery.join()
            self._thread = self._delivery = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def warmup(self) -> None:
        """Compile prefill for every prompt bucket and the decode step, so that no request waits for a
        compilation (beam search compiles at its first request per bucket and number of beams). Call it before
        start(): the running engine owns the device state."""
        if self._thread is not None:
            raise InferenceError("warmup() must run before start()")
        row = SamplingArrays.row(SamplingParams(), 0)
        for n in self.steps.compiled.buckets:  # a prompt of n tokens, its padded part padded to n
            self._run_prefill(0, [0] * n, row, want_logprobs=False, bucket=n)
        active = np.zeros((len(self._slots),), bool)
        self._state, out = self.steps.decode(self.params, self._state, active, np.bool_(False))
        jax.block_until_ready(out)

    # ---- submission ------------------------------------------------------------------------------------
    def tokenize(self, prompt: str | Sequence[int]) -> list[int]:
        """Prompt ids (text encoded, or ids checked against the vocabulary); an empty prompt starts from the
        beginning-of-text token where the tokenizer has one."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            if self.tokenizer.bos_id is None:
                raise InferenceError(
                    "the prompt is empty: expected at least one token (this tokenizer has no "
                    "beginning-of-text token to start from)"
                )
            ids = [self.tokenizer.bos_id]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InferenceError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def encode_prompt(self, prompt: str | Sequence[int], max_tokens: int, truncate: bool = False) -> list[int]:
        """Prompt ids as the model reads them, checked against the context: prompt + max_tokens must fit in max_len
        positions. An encoder-decoder trained on pairs reads the prompt as its source: the decoder's start token
        follows it (here only, so that ids from `tokenize` submitted later get it once)."""
        ids = self.tokenize(prompt)
        if self.loaded.decoder_start is not None:
            ids = ids + [self.loaded.decoder_start]
        room = self.max_len - (0 if self.steps.unbounded else max_tokens)  # a ring cache decodes past max_len
        if len(ids) > room:
            if not truncate or room < 1:
                raise InferenceError(
                    f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: together they exceed the "
                    f"context of {self.max_len} tokens (ask for at most {max(self.max_len - len(ids), 0)} "
                    "new tokens, or truncate the prompt)"
                )
            ids = ids[-room:]
        return ids

    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams = SamplingParams(),
        *,
        on_token: Optional[Callable[[TokenEvent], None]] = None,
        truncate: bool = False,
        request_id: Optional[str] = None,
        owner: Optional[str] = None,
    ) -> Request:
        """Queue a request (for `owner`: see infer.fairness); raises InferenceError for a bad prompt or settings,
        QueueFullError when full."""
        params.validate(self.num_logprobs)
        ids = self.encode_prompt(prompt, params.max_tokens, truncate)
        if params.num_beams > 1:
            self.beams.check(ids, params.max_tokens)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            seed = params.seed if params.seed is not None else int(self._seeds.integers(2**63))
            request = Request(request_id or f"req-{next(self._ids)}", ids, params, seed, on_token, owner)
            self._waiting.append(request)
            self._lock.notify_all()
        return request

    def generate(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams(), **kw: Any) -> Completion:
        return self.submit(prompt, params, **kw).result()

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                slots=len(self._slots),
                active=sum(r is not None for r in self._slots),
                waiting=len(self._waiting),
                compilations=self.steps.compiled.compilations,
                generated_tokens=self._generated,
                buckets=self.steps.compiled.buckets,
            )

    # ---- the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        pending: deque[tuple[Any, list[tuple[int, Request]]]] = deque()
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        break
                    idle = not self._waiting and not pending and all(r is None for r in self._slots)
                    if idle:
                        self._lock.wait()
                        continue
                self._admit()
                running = [(b, r) for b, r in enumerate(self._slots) if r is not None]
                if running:
                    active = np.zeros((len(self._slots),), bool)
                    active[[b for b, _ in running]] = True
                    want = any(r.params.logprobs is not None for _, r in running)
                    self._state, out = self.steps.decode(self.params, self._state, active, np.bool_(want))
                    pending.append((out, running))
                # Read step n's tokens while step n + 1 runs: the host work overlaps the device's.
                while pending and (len(pending) > 1 or not running):
                    out, ran = pending.popleft()
                    self._accept(host_output(out), ran)
        except Exception:  # end every request rather than leave callers waiting forever
            log.exception("engine loop failed")
        finally:
            self._cancel_all()

    def _cancel_all(self) -> None:
        with self._lock:
            requests = [r for r in self._slots if r is not None] + list(self._waiting)
            self._waiting.clear()
            self._slots = [None] * len(self._slots)
            for r in requests:
                r._ended = True
        self._results.put([_Result(r, None, None, False, "cancelled") for r in requests])

    def _admit(self) -> None:
        while True:
            with self._lock:
                for cancelled in self._waiting.drop_cancelled():
                    self._results.put([_Result(cancelled, None, None, False, "cancelled")])
                free = [b for b, r in enumerate(self._slots) if r is None]
                held = Counter(r.owner for r in self._slots if r is not None)
                request = self._waiting.pop(len(free), held)
                if request is None:
                    return
                beam = request.params.num_beams > 1  # needs no slot
                if not beam:
                    self._slots[free[0]] = request
            if beam:
                self._search(request)
            else:
                self._prefill(free[0], request)

    def _search(self, request: Request) -> None:
        """Run a beam search request's whole search, then accept its best hypothesis's tokens one by one."""
        p = request.params
        end_ids = set(p.stop_token_ids)  # what _accept ends a request at
        if self.tokenizer.eos_id is not None and not p.ignore_eos:
            end_ids.add(self.tokenizer.eos_id)
        result = self.beams.search(
            self.params, request.prompt_ids, p.num_beams, p.max_tokens, p.length_penalty, p.early_stopping, end_ids
        )
        request.hypotheses = result.hypotheses
        for token in result.hypotheses[0].token_ids:  # the last one ends it: an end token, or max_tokens
            self._accept({"tokens": np.asarray([token])}, [(0, request)])

    def _prefill(self, slot: int, request: Request) -> None:
        out = self._run_prefill(
            slot,
            request.prompt_ids,
            SamplingArrays.row(request.params, request.seed),
            want_logprobs=request.params.logprobs is not None,
        )
        self._accept(host_output(out), [(0, request)])

    def _run_prefill(
        self, slot: int, ids: list[int], row: SamplingArrays, want_logprobs: bool, bucket: Optional[int] = None
    ) -> Any:
        """Prefill `ids` into `slot`, the part the model pads (see its `prompt_arrays`) padded to its bucket (or to
        `bucket`); returns the step output (the first new token)."""
        ids_1xL, length, *source = self.steps.model.prompt_arrays(
            ids, lambda tokens: self.steps.compiled.pad(tokens, bucket)
        )
        self._state, out = self.steps.prefill(
            self.params, self._state, np.int32(slot), ids_1xL, length, row, np.bool_(want_logprobs), *source
        )
        return out

    def _accept(self, out: dict[str, np.ndarray], ran: list[tuple[int, Request]]) -> None:
        """Take each running request's new token, end those that are done, and hand the tokens to delivery."""
        results = []
        for row, request in ran:
            if request._ended:
                continue  # ended while this step was in flight: its token is one too many
            if request.cancelled:
                self._end(request)
                results.append(_Result(request, None, None, False, "cancelled"))
                continue
            token = int(out["tokens"][row])
            p = request.params
            if request.first_token_at is None:
                request.first_token_at = time.monotonic()
            request.token_ids.append(token)
            self._generated += 1
            logprobs = None
            if p.logprobs is not None:
                logprobs = (
                    float(out["logprobs"][row]),
                    out["top_ids"][row][: p.logprobs].tolist(),
                    out["top_logprobs"][row][: p.logprobs].tolist(),
                )
            stop_token = not p.ignore_eos and token == self.tokenizer.eos_id or token in p.stop_token_ids
            finish = "stop" if stop_token else "length" if len(request.token_ids) >= p.max_tokens else None
            if finish is not None:
                self._end(request)
            results.append(_Result(request, token, logprobs, not stop_token, finish))
        if results:
            self._results.put(results)

    def _end(self, request: Request) -> None:
        """Generate no more for `request` and free its slot (from either thread)."""
        with self._lock:
            request._ended = True
            self._slots = [None if r is request else r for r in self._slots]

    # ---- delivery ----------------------------------------------------------------------------------------
    def _deliver(self) -> None:
        """The delivery thread: each accepted token's text, event and, at the end, the request's Completion."""
        while (results := self._results.get()) is not None:
            for result in results:
                try:
                    self._deliver_one(result)
                except Exception:  # end this request rather than leave its caller waiting, and go on
                    log.exception("delivering a token of request %s failed; cancelling it", result.request.id)
                    self._end(result.request)
                    self._complete(result.request, "cancelled")

    def _deliver_one(self, result: _Result) -> None:
        request, token = result.request, result.token_id
        if request.done:
            return  # a stop string ended it; the loop had generated further
        if token is not None:
            text = request._text = request._text or CompletionText(
                self.tokenizer, request.prompt_ids, request.params.stop
            )
            top_ids = result.logprobs[1] if result.logprobs is not None else []
            if result.in_text:
                own, others, shown = text.add(token, top_ids, final=result.finish is not None)
            else:
                own, others, shown = text.stop_token(token, top_ids)
            logprob = None
            if result.logprobs is not None:
                chosen, _, top_logprobs = result.logprobs
                logprob = TokenLogprob(token, own, chosen, tuple(zip(top_ids, others, top_logprobs)))
                request._logprobs.append(logprob)
            request._ids.append(token)
            request._publish(TokenEvent(request.id, len(request._ids) - 1, token, shown, logprob))
            if text.stopped:
                self._end(request)
                self._complete(request, "stop")
                return
        if result.finish is not None:
            self._complete(request, result.finish)

    def _complete(self, request: Request, reason: str) -> None:
        if request.done:
            return
        first = None if request.first_token_at is None else request.first_token_at - request.submitted
        request._publish(
            completion=Completion(
                request_id=request.id,
                text="" if request._text is None else request._text.text,
                token_ids=tuple(request._ids),
                finish_reason=reason,
                prompt_tokens=len(request.prompt_ids),
                logprobs=tuple(request._logprobs) if request.params.logprobs is not None else None,
                time_to_first_token_s=first,
                hypotheses=request.hypotheses,
            )
        )
