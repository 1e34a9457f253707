"""OpenAI-compatible text and chat completions, streamed or whole, through the models' engines."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mulm_jax.api.errors import ApiError, from_inference
from mulm_jax.api.registry import ServedModel
from mulm_jax.api.schemas import Body, read_json
from mulm_jax.api.sse import EventStream, event, until_disconnect
from mulm_jax.infer import Completion, InferenceError, SamplingError, SamplingParams, TokenEvent, TokenLogprob
from mulm_jax.infer import Request as EngineRequest

MAX_PROMPTS = 64  # prompts x n in one request
MAX_STOPS = 4
SAMPLING_FIELDS = ("model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
                   "frequency_penalty", "stream", "stream_options", "top_k", "min_p", "repetition_penalty", "user")
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Generation:
    """One HTTP request's work: prompts (token ids) x n samples with one set of sampling parameters."""

    served: ServedModel
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    chat: bool
    id: str
    created: int

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


# ---- parsing -------------------------------------------------------------------------------------------

def _sampling(body: Body, served: ServedModel, *, max_tokens: int, stop: tuple[str, ...],
              logprobs: Optional[int]) -> SamplingParams:
    """The request's sampling settings; max_tokens is already checked against the context (see _fit)."""
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.number("temperature", 1.0, lo=0.0, hi=2.0),
        top_p=body.number("top_p", 1.0, lo=0.0, hi=1.0),
        top_k=body.integer("top_k", 0, lo=0, hi=served.engine.vocab_size),
        min_p=body.number("min_p", 0.0, lo=0.0, hi=1.0),
        repetition_penalty=body.number("repetition_penalty", 1.0, lo=0.0, hi=10.0),
        presence_penalty=body.number("presence_penalty", 0.0, lo=-2.0, hi=2.0),
        frequency_penalty=body.number("frequency_penalty", 0.0, lo=-2.0, hi=2.0),
        seed=body.integer("seed", None, lo=0, hi=2**63 - 1 - MAX_PROMPTS),
        stop=stop, logprobs=logprobs)
    try:
        params.validate(served.engine.num_logprobs)
    except SamplingError as e:
        raise ApiError(400, str(e), param=str(e).split("=", 1)[0], code="invalid_value") from None
    return params


def _stops(body: Body) -> tuple[str, ...]:
    stops = body.strings("stop", (), max_items=MAX_STOPS)
    if any(not s for s in stops):
        raise ApiError(400, "stop strings must not be empty", param="stop", code="invalid_value")
    return stops


def _fit(served: ServedModel, ids: list[int], max_tokens: Optional[int], param: str) -> int:
    """max_tokens for a prompt of `ids` (given, or all the room left), checked against the context."""
    context = served.engine.max_len
    if len(ids) >= context:
        raise ApiError(400, f"the prompt has {len(ids)} tokens: the model's context is {context} tokens, so a prompt "
                            f"may have at most {context - 1}", param=param, code="context_length_exceeded")
    if max_tokens is None:
        return context - len(ids)
    if len(ids) + max_tokens > context:
        raise ApiError(400, f"max_tokens={max_tokens} with a prompt of {len(ids)} tokens exceeds the model's context "
                            f"of {context} tokens: ask for at most {context - len(ids)}", param="max_tokens",
                       code="context_length_exceeded")
    return max_tokens


def _encode(served: ServedModel, prompt: Any, param: str) -> list[int]:
    try:
        return served.engine.tokenize(prompt)
    except ValueError as e:  # InferenceError, or the tokenizer's DataError (a character it does not know)
        raise ApiError(400, str(e), param=param, code="invalid_value") from None


def _text_prompts(body: Body) -> list[Any]:
    """`prompt`: a string, an array of strings, an array of token ids, or an array of arrays of token ids."""
    prompt = body.raw("prompt")
    expected = "a string, an array of strings, an array of token ids or an array of arrays of token ids"
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                                               for t in p)) for p in prompt):
        prompts = list(prompt)
    else:
        raise ApiError(400, f"prompt is not valid: expected {expected}", param="prompt", code="invalid_value")
    return prompts


def _chat_prompt(body: Body, served: ServedModel) -> str:
    messages = body.array("messages")
    if not messages:
        raise ApiError(400, "messages must hold at least one message", param="messages", code="invalid_value")
    rendered = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise ApiError(400, f"{where} must be an object with a role among {', '.join(CHAT_ROLES)}",
                           param=where, code="invalid_value")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts ({{'type': 'text', 'text': ...}}) are "
                                    "supported", param=f"{where}.content", code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string or an array of text parts",
                           param=f"{where}.content", code="invalid_value")
        rendered.append({"role": CHAT_ROLES[m["role"]], "content": content})
    return served.chat.render(rendered)


def _include_usage(body: Body, stream: bool) -> bool:
    options = body.object("stream_options", None)
    if options is None:
        return False
    if not stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options",
                       code="invalid_value")
    return Body(options).only(("include_usage",)).boolean("include_usage", False)


async def parse_completion(ctx, request: Request) -> Generation:
    body = (await read_json(request, ctx.settings.max_body_bytes)).only(SAMPLING_FIELDS + ("prompt", "logprobs"))
    served = ctx.models.get(body.string("model"))
    stream = body.boolean("stream", False)
    max_tokens = body.integer("max_tokens", 16, lo=1)
    logprobs = body.integer("logprobs", None, lo=0, hi=served.engine.num_logprobs)
    prompts = [_encode(served, p, "prompt") for p in _text_prompts(body)]
    for ids in prompts:
        _fit(served, ids, max_tokens, "prompt")
    params = _sampling(body, served, max_tokens=max_tokens, stop=_stops(body), logprobs=logprobs)
    return _generation(body, served, prompts, params, stream, chat=False, prefix="cmpl")


async def parse_chat(ctx, request: Request) -> Generation:
    body = (await read_json(request, ctx.settings.max_body_bytes)).only(
        SAMPLING_FIELDS + ("messages", "logprobs", "top_logprobs", "max_completion_tokens"))
    served = ctx.models.get(body.string("model"))
    stream = body.boolean("stream", False)
    max_tokens = body.integer("max_completion_tokens", None, lo=1)
    max_tokens = body.integer("max_tokens", max_tokens, lo=1)
    want_logprobs = body.boolean("logprobs", False)
    top = body.integer("top_logprobs", None, lo=0, hi=served.engine.num_logprobs)
    if top is not None and not want_logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    ids = _encode(served, _chat_prompt(body, served), "messages")
    max_tokens = _fit(served, ids, max_tokens, "messages")
    params = _sampling(body, served, max_tokens=max_tokens, stop=served.chat.stop + _stops(body),
                       logprobs=(top or 0) if want_logprobs else None)
    return _generation(body, served, [ids], params, stream, chat=True, prefix="chatcmpl")


def _generation(body: Body, served: ServedModel, prompts: list[list[int]], params: SamplingParams, stream: bool,
                *, chat: bool, prefix: str) -> Generation:
    n = body.integer("n", 1, lo=1, hi=MAX_PROMPTS)
    if n * len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} is more than {MAX_PROMPTS} sequences in one request",
                       param="n", code="invalid_value")
    return Generation(served, prompts, params, n, stream, _include_usage(body, stream), chat,
                      f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()))


# ---- running -------------------------------------------------------------------------------------------

def submit_all(ctx, gen: Generation, client: str) -> list[EngineRequest]:
    """Queue every (prompt, sample); all or none: a full queue cancels those already queued."""
    ctx.limiter.admit_generation(client)
    submitted: list[EngineRequest] = []
    try:
        for ids in gen.prompts:
            for i in range(gen.n):
                seed = None if gen.params.seed is None else gen.params.seed + i
                submitted.append(gen.served.engine.submit(ids, gen.params.replace(seed=seed),
                                                          request_id=f"{gen.id}-{len(submitted)}"))
    except InferenceError as e:
        for r in submitted:
            r.cancel()
        raise from_inference(e) from None
    return submitted


def _account(ctx, gen: Generation, client: str, completion: Completion) -> None:
    ctx.limiter.charge_tokens(client, completion.completion_tokens)
    if completion.time_to_first_token_s is not None:
        ctx.metrics.time_to_first_token.observe(completion.time_to_first_token_s, gen.served.id)


def _abandon(ctx, requests: Sequence[EngineRequest], client: str) -> None:
    """Cancel requests whose client left (their slots free at the next step); what they generated still counts."""
    for r in requests:
        r.cancel()
        ctx.limiter.charge_tokens(client, len(r.token_ids))


def _cancelled_by_server() -> ApiError:
    return ApiError(503, "the generation was cancelled because the server is stopping", type="server_error",
                    code="cancelled")


def _logprobs(gen: Generation, logprobs: Sequence[TokenLogprob], offset: int) -> dict:
    """Log-probabilities in the route's format (chat or legacy completions); `offset`: of the first token's text."""
    return _chat_logprobs(logprobs) if gen.chat else _text_logprobs(logprobs, offset)


async def _whole(ctx, gen: Generation, request: Request, client: str) -> Response:
    requests = submit_all(ctx, gen, client)

    async def finished(r: EngineRequest) -> Completion:
        async for _ in r.batches():
            pass
        return r.completion

    results = asyncio.ensure_future(asyncio.gather(*(finished(r) for r in requests)))
    gone = asyncio.ensure_future(until_disconnect(request.receive))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not results.done():  # the client left: stop generating for it
            _abandon(ctx, requests, client)
            results.cancel()
    if not results.done() or results.cancelled():
        return Response(status_code=499)
    completions = results.result()
    for c in completions:
        _account(ctx, gen, client, c)
        if c.finish_reason == "cancelled":
            raise _cancelled_by_server()
    choices = []
    for index, c in enumerate(completions):
        logprobs = None if c.logprobs is None else _logprobs(gen, c.logprobs, 0)
        choice = {"index": index, "logprobs": logprobs, "finish_reason": c.finish_reason}
        if gen.chat:
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice["text"] = c.text
        choices.append(choice)
    return JSONResponse({"id": gen.id, "object": gen.object, "created": gen.created, "model": gen.served.id,
                         "system_fingerprint": None, "choices": choices, "usage": _usage(gen, completions)})


def _usage(gen: Generation, completions: Sequence[Completion]) -> dict:
    prompt = sum(len(ids) for ids in gen.prompts)
    generated = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _streamed(ctx, gen: Generation, client: str) -> Response:
    requests = submit_all(ctx, gen, client)
    chunk_object = "chat.completion.chunk" if gen.chat else "text_completion"

    def chunk(choices: list, **extra: Any) -> str:
        return event({"id": gen.id, "object": chunk_object, "created": gen.created, "model": gen.served.id,
                      "system_fingerprint": None, "choices": choices, **extra})

    def choice(index: int, text: Optional[str], logprobs: list[TokenLogprob], finish: Optional[str],
               offset: int) -> dict:
        out: dict = {"index": index, "finish_reason": finish,
                     "logprobs": _logprobs(gen, logprobs, offset) if logprobs else None}
        if gen.chat:
            out["delta"] = {} if text is None else {"content": text}
        else:
            out["text"] = text or ""
        return out

    async def events() -> AsyncIterator[str]:
        queue: asyncio.Queue = asyncio.Queue()

        async def forward(index: int, r: EngineRequest) -> None:
            async for batch in r.batches():
                queue.put_nowait((index, batch))
            queue.put_nowait((index, r.completion))

        tasks = [asyncio.ensure_future(forward(i, r)) for i, r in enumerate(requests)]
        try:
            if gen.chat:
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(len(requests))])
            offsets = [0] * len(requests)
            completions: list[Completion] = []

            def tokens(index: int, batch: list[TokenEvent]) -> str:
                """One chunk for all the tokens a sequence has pending (OpenAI clients take several per chunk)."""
                text = "".join(e.text for e in batch)
                logprobs = [e.logprob for e in batch if e.logprob is not None]
                if not text and not logprobs:
                    return ""
                out = chunk([choice(index, text, logprobs, None, offsets[index])])
                offsets[index] += sum(len(lp.text) for lp in logprobs)
                return out

            while len(completions) < len(requests):
                items = [await queue.get()]
                while not queue.empty():  # everything pending goes out in one write
                    items.append(queue.get_nowait())
                pending: dict[int, list[TokenEvent]] = {}
                out = []
                for index, item in items:
                    if isinstance(item, list):
                        pending.setdefault(index, []).extend(item)
                        continue
                    out.append(tokens(index, pending.pop(index, [])))
                    completions.append(item)
                    _account(ctx, gen, client, item)
                    if item.finish_reason == "cancelled":
                        yield "".join(out) + event(_cancelled_by_server().body())
                        return
                    out.append(chunk([choice(index, None if gen.chat else "", [], item.finish_reason,
                                             offsets[index])]))
                out.extend(tokens(index, batch) for index, batch in pending.items())
                if any(out):
                    yield "".join(out)
            if gen.include_usage:
                yield chunk([], usage=_usage(gen, completions))
            yield event("[DONE]")
        finally:
            for t in tasks:
                t.cancel()

    def on_close() -> None:  # finished, or the client left: free the slots of what is still running
        _abandon(ctx, [r for r in requests if not r.done], client)

    return EventStream(events(), on_close)


def _text_logprobs(logprobs: Sequence[TokenLogprob], offset: int) -> dict:
    """The legacy completions format: parallel lists of tokens, their log-probabilities and top alternatives.

    A token's text is its share of the completion's text (a word start with its space; "" for all but the last
    byte piece of a character), so the tokens join into the text and `text_offset` indexes it."""
    offsets, at = [], offset
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.text)
    return {"tokens": [lp.text for lp in logprobs], "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{text: v for _, text, v in lp.top} for lp in logprobs], "text_offset": offsets}


def _chat_logprobs(logprobs: Sequence[TokenLogprob]) -> dict:
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(lp.text, lp.logprob), "top_logprobs": [entry(text, v) for _, text, v in lp.top]}
                        for lp in logprobs]}


# ---- routes --------------------------------------------------------------------------------------------

def routes(ctx) -> list[Route]:
    async def run(request: Request, gen: Generation) -> Response:
        client = ctx.client_id(request)
        return _streamed(ctx, gen, client) if gen.stream else await _whole(ctx, gen, request, client)

    async def completions(request: Request) -> Response:
        """Complete one or more prompts (OpenAI's completions API; `stream: true` for Server-Sent Events).
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [model, prompt]
                properties:
                  model: {type: string}
                  prompt: {oneOf: [{type: string}, {type: array}]}
                  max_tokens: {type: integer, minimum: 1, default: 16}
                  temperature: {type: number, minimum: 0, maximum: 2, default: 1}
                  top_p: {type: number, minimum: 0, maximum: 1}
                  top_k: {type: integer, minimum: 0, description: "extension: 0 keeps every token"}
                  min_p: {type: number, minimum: 0, maximum: 1, description: extension}
                  repetition_penalty: {type: number, description: extension}
                  presence_penalty: {type: number, minimum: -2, maximum: 2}
                  frequency_penalty: {type: number, minimum: -2, maximum: 2}
                  n: {type: integer, minimum: 1}
                  stop: {oneOf: [{type: string}, {type: array, items: {type: string}, maxItems: 4}]}
                  seed: {type: integer}
                  logprobs: {type: integer, minimum: 0, maximum: 5}
                  stream: {type: boolean}
        """
        return await run(request, await parse_completion(ctx, request))

    async def chat_completions(request: Request) -> Response:
        """Reply to a conversation, rendered by the model's chat template (OpenAI's chat completions API).
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [model, messages]
                properties:
                  model: {type: string}
                  messages:
                    type: array
                    items:
                      type: object
                      properties:
                        role: {type: string, enum: [system, developer, user, assistant]}
                        content: {type: string}
                  max_tokens: {type: integer, minimum: 1}
                  logprobs: {type: boolean}
                  top_logprobs: {type: integer, minimum: 0, maximum: 5}
                  stream: {type: boolean}
        """
        return await run(request, await parse_chat(ctx, request))

    return [Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"])]
