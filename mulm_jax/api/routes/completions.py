"""OpenAI-compatible text and chat completions, streamed or whole, through the models' engines."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mulm_jax.api.errors import ApiError, from_inference
from mulm_jax.api.keys import Caller
from mulm_jax.api.quotas import Hold
from mulm_jax.api.registry import MODEL_ERRORS, ServedModel
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.schemas import ApiModel, Int, Text, TokenIds, bad_value, one_of
from mulm_jax.api.sse import EventStream, event, until_disconnect
from mulm_jax.infer import Completion, InferenceError, SamplingError, SamplingParams, TokenEvent, TokenLogprob
from mulm_jax.infer import Request as EngineRequest
from mulm_jax.infer.engine import NUM_LOGPROBS
from mulm_jax.infer.sampling import LIMITS

MAX_PROMPTS = 64  # prompts x n in one request
MAX_STOPS = 4
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
STREAMED = ("application/json", "text/event-stream")  # the whole answer, or `stream: true`'s events


class StreamOptions(ApiModel):
    include_usage: bool = False


def setting(name: str, **annotations: Any) -> Any:
    """A sampling field of a body: the engine's default and range for it (SamplingParams, sampling.LIMITS)."""
    return Field(getattr(SamplingParams(), name), **LIMITS[name], **annotations)


class Sampling(ApiModel):
    """What completions and chat completions share."""

    model: str
    temperature: float = setting("temperature")
    top_p: float = setting("top_p")
    top_k: Int = setting("top_k", description="extension: keep the k likeliest tokens (0: all; at most the vocabulary)")
    min_p: float = setting("min_p", description="extension")
    repetition_penalty: float = setting("repetition_penalty", description="extension")
    presence_penalty: float = setting("presence_penalty")
    frequency_penalty: float = setting("frequency_penalty")
    n: Int = Field(1, ge=1, le=MAX_PROMPTS, description=f"samples per prompt (prompts x n at most {MAX_PROMPTS})")
    stop: Annotated[
        Union[Text, Annotated[list[Text], Field(max_length=MAX_STOPS)]],
        one_of(f"a non-empty string or an array of at most {MAX_STOPS} of them"),
    ] = None
    seed: Int = Field(
        None,
        ge=LIMITS["seed"]["ge"],
        lt=LIMITS["seed"]["lt"] - MAX_PROMPTS,
        description=f"sample i draws with seed + i (i < {MAX_PROMPTS}); none: a random seed",
    )
    num_beams: Int = setting(
        "num_beams",
        description="extension: beam search over this many beams; the choice is "
        "the best hypothesis (1: sample, or greedy at temperature 0)",
    )
    length_penalty: float = setting(
        "length_penalty",
        description="extension, with num_beams: hypotheses rank by log P / ((5 + length) / 6) ** length_penalty",
    )
    early_stopping: bool = Field(
        SamplingParams().early_stopping,
        description="extension, with num_beams: end the search once no beam can beat those "
        "kept (the result is the same)",
    )
    stream: bool = Field(False, description="Server-Sent Events (OpenAI's chunks), ending with `data: [DONE]`")
    stream_options: StreamOptions = Field(None, description="only with stream: true")
    user: str = None


class TextCompletion(Sampling):
    prompt: Annotated[
        Union[Text, TokenIds, Annotated[list[Union[Text, TokenIds]], Field(min_length=1)]],
        one_of("a non-empty string, array of strings, array of token ids or array of arrays of token ids"),
    ]
    max_tokens: Int = setting("max_tokens")
    logprobs: Int = Field(None, ge=0, le=NUM_LOGPROBS, description="alternatives listed per token")


class TextPart(ApiModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(ApiModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal[tuple(CHAT_ROLES)]
    content: Annotated[
        Union[str, list[TextPart]],
        one_of("a string or an array of text parts ({'type': 'text', 'text': ...}): only text is supported"),
    ]

    @model_validator(mode="before")
    @classmethod
    def _known_role(cls, data: Any) -> Any:
        role = data.get("role") if isinstance(data, dict) else None
        if not isinstance(role, str) or role not in CHAT_ROLES:  # the message is named, not its role
            raise PydanticCustomError(
                "invalid_value", "expected an object with a role among {roles}", {"roles": ", ".join(CHAT_ROLES)}
            )
        return data

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletion(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Int = Field(None, **LIMITS["max_tokens"], description="default: all the context leaves")
    max_completion_tokens: Int = Field(None, **LIMITS["max_tokens"], description="max_tokens, by its newer name")
    logprobs: bool = False
    top_logprobs: Int = Field(
        None, ge=0, le=NUM_LOGPROBS, description="alternatives listed per token; needs logprobs: true"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[dict[str, Any]]  # tokens, token_logprobs, top_logprobs, text_offset (when asked for)
    finish_reason: str


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    logprobs: Optional[dict[str, Any]]  # content: one entry per token (when asked for)
    finish_reason: str


class Answer(BaseModel):
    """A whole (not streamed) answer; streamed, the same fields come in chunks."""

    id: str
    created: int  # unix seconds
    model: str
    system_fingerprint: None = None
    usage: Usage


class TextAnswer(Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]


class ChatAnswer(Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


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


# ---- parsing -------------------------------------------------------------------------------------------


def _sampling(
    body: Sampling, served: ServedModel, *, max_tokens: int, stop: tuple[str, ...], logprobs: Optional[int]
) -> SamplingParams:
    """The request's sampling settings; max_tokens is already checked against the context (see _fit)."""
    vocab = served.engine.vocab_size
    if body.top_k > vocab:
        raise bad_value("top_k", body.top_k, f"an integer between 0 and the vocabulary's size, {vocab}")
    if body.num_beams > 1 and body.n > 1:
        raise bad_value("n", body.n, f"1 with num_beams={body.num_beams}: beam search gives one choice, its best")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=body.seed,
        stop=stop,
        logprobs=logprobs,
        num_beams=body.num_beams,
        length_penalty=body.length_penalty,
        early_stopping=body.early_stopping,
    )
    try:
        params.validate(served.engine.num_logprobs)
    except SamplingError as e:
        raise ApiError(400, str(e), param=str(e).split("=", 1)[0], code="invalid_value") from None
    return params


def _stops(body: Sampling) -> tuple[str, ...]:
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())


def _fit(served: ServedModel, ids: list[int], max_tokens: Optional[int], param: str) -> int:
    """max_tokens for a prompt of `ids` (given, or all the room left), checked against the context (where an
    encoder-decoder trained on pairs also reads its decoder's start token)."""
    context = served.engine.max_len - (served.loaded.decoder_start is not None)
    if len(ids) >= context:
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens: the model's context is {context} tokens, so a prompt "
            f"may have at most {context - 1}",
            param=param,
            code="context_length_exceeded",
        )
    if max_tokens is None:
        return context - len(ids)
    if len(ids) + max_tokens > context:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} with a prompt of {len(ids)} tokens exceeds the model's context "
            f"of {context} tokens: ask for at most {context - len(ids)}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def _chat_prompt(body: ChatCompletion, served: ServedModel) -> str:
    messages = [{"role": CHAT_ROLES[m.role], "content": m.text()} for m in body.messages]
    try:
        return served.chat.render(messages)
    except InferenceError as e:  # the template refused them (a Jinja template's raise_exception, or a failure)
        raise ApiError(400, str(e), param="messages", code="chat_template_error") from None


def parse_completion(ctx, body: TextCompletion) -> Generation:
    served = ctx.models.get(body.model)
    is_one_prompt = isinstance(body.prompt, str) or all(isinstance(t, int) for t in body.prompt)
    prompts = [served.encode(p, "prompt", prompt=True) for p in ([body.prompt] if is_one_prompt else body.prompt)]
    for ids in prompts:
        _fit(served, ids, body.max_tokens, "prompt")
    params = _sampling(body, served, max_tokens=body.max_tokens, stop=_stops(body), logprobs=body.logprobs)
    return _generation(body, served, prompts, params, chat=False, prefix="cmpl")


def parse_chat(ctx, body: ChatCompletion) -> Generation:
    served = ctx.models.get(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    ids = served.encode(_chat_prompt(body, served), "messages", prompt=True)
    max_tokens = _fit(served, ids, body.max_tokens or body.max_completion_tokens, "messages")
    params = _sampling(
        body,
        served,
        max_tokens=max_tokens,
        stop=served.chat.stop + _stops(body),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    return _generation(body, served, [ids], params, chat=True, prefix="chatcmpl")


def _generation(
    body: Sampling, served: ServedModel, prompts: list[list[int]], params: SamplingParams, *, chat: bool, prefix: str
) -> Generation:
    if body.n * len(prompts) > MAX_PROMPTS:
        raise ApiError(
            400,
            f"{len(prompts)} prompts x n={body.n} is more than {MAX_PROMPTS} sequences in one request",
            param="n",
            code="invalid_value",
        )
    if body.stream_options is not None and not body.stream:
        raise ApiError(
            400, "stream_options is only allowed with stream: true", param="stream_options", code="invalid_value"
        )
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return Generation(
        served,
        prompts,
        params,
        body.n,
        body.stream,
        include_usage,
        chat,
        f"{prefix}-{uuid.uuid4().hex[:24]}",
        int(time.time()),
    )


# ---- running -------------------------------------------------------------------------------------------


def submit_all(ctx, gen: Generation, who: Caller) -> tuple[list[EngineRequest], Hold]:
    """Queue every (prompt, sample) for the caller, within its quotas; all or none: a full queue cancels those
    already queued. The Hold counts them against its max_streams until the answer ends: release it then."""
    ctx.limiter.admit_generation(who.client, who.quotas.tokens_per_minute)
    ctx.streams.admit(who, len(gen.prompts) * gen.n)
    submitted: list[EngineRequest] = []
    try:
        for ids in gen.prompts:
            for i in range(gen.n):
                seed = None if gen.params.seed is None else gen.params.seed + i
                submitted.append(
                    gen.served.engine.submit(
                        ids, gen.params.replace(seed=seed), request_id=f"{gen.id}-{len(submitted)}", owner=who.client
                    )
                )
    except InferenceError as e:
        for r in submitted:
            r.cancel()
        raise from_inference(e) from None
    return submitted, ctx.streams.add(who, len(submitted))


def _account(ctx, gen: Generation, who: Caller, completion: Completion) -> None:
    ctx.limiter.charge_tokens(who.client, completion.completion_tokens, who.quotas.tokens_per_minute)
    if completion.time_to_first_token_s is not None:
        ctx.metrics.time_to_first_token.observe(completion.time_to_first_token_s, gen.served.id)


def _abandon(ctx, requests: Sequence[EngineRequest], who: Caller) -> None:
    """Cancel requests whose client left (their slots free at the next step); what they generated still counts."""
    for r in requests:
        r.cancel()
        ctx.limiter.charge_tokens(who.client, len(r.token_ids), who.quotas.tokens_per_minute)


def _cancelled_by_server() -> ApiError:
    return ApiError(
        503, "the generation was cancelled because the server is stopping", type="server_error", code="cancelled"
    )


def _logprobs(gen: Generation, logprobs: Sequence[TokenLogprob], offset: int) -> dict:
    """Log-probabilities in the route's format (chat or legacy completions); `offset`: of the first token's text."""
    return _chat_logprobs(logprobs) if gen.chat else _text_logprobs(logprobs, offset)


async def _whole(ctx, gen: Generation, request: Request, who: Caller) -> Response:
    requests, hold = submit_all(ctx, gen, who)
    try:
        return await _answer(ctx, gen, request, who, requests)
    finally:
        hold.release()


async def _answer(ctx, gen: Generation, request: Request, who: Caller, requests: list[EngineRequest]) -> Response:
    """The whole answer to `requests`, once all are complete (499 when the client left first)."""

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
            _abandon(ctx, requests, who)
            results.cancel()
    if not results.done() or results.cancelled():
        return Response(status_code=499)
    completions = results.result()
    for c in completions:
        _account(ctx, gen, who, c)
        if c.finish_reason == "cancelled":
            raise _cancelled_by_server()
    choices = [
        {
            "index": index,
            "finish_reason": c.finish_reason,
            "logprobs": None if c.logprobs is None else _logprobs(gen, c.logprobs, 0),
            **({"message": ChatReply(content=c.text)} if gen.chat else {"text": c.text}),
        }
        for index, c in enumerate(completions)
    ]
    answer = (ChatAnswer if gen.chat else TextAnswer)(
        id=gen.id, created=gen.created, model=gen.served.id, choices=choices, usage=_usage(gen, completions)
    )
    return JSONResponse(answer.model_dump(mode="json"))


def _usage(gen: Generation, completions: Sequence[Completion]) -> Usage:
    prompt = sum(len(ids) for ids in gen.prompts)
    generated = sum(c.completion_tokens for c in completions)
    return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)


def _streamed(ctx, gen: Generation, who: Caller) -> Response:
    requests, hold = submit_all(ctx, gen, who)
    chunk_object = "chat.completion.chunk" if gen.chat else "text_completion"

    def chunk(choices: list, **extra: Any) -> str:
        return event(
            {
                "id": gen.id,
                "object": chunk_object,
                "created": gen.created,
                "model": gen.served.id,
                "system_fingerprint": None,
                "choices": choices,
                **extra,
            }
        )

    def choice(
        index: int, text: Optional[str], logprobs: list[TokenLogprob], finish: Optional[str], offset: int
    ) -> dict:
        out: dict = {
            "index": index,
            "finish_reason": finish,
            "logprobs": _logprobs(gen, logprobs, offset) if logprobs else None,
        }
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
                yield chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                        for i in range(len(requests))
                    ]
                )
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
                    _account(ctx, gen, who, item)
                    if item.finish_reason == "cancelled":
                        yield "".join(out) + event(_cancelled_by_server().body())
                        return
                    out.append(chunk([choice(index, None if gen.chat else "", [], item.finish_reason, offsets[index])]))
                out.extend(tokens(index, batch) for index, batch in pending.items())
                if any(out):
                    yield "".join(out)
            if gen.include_usage:
                yield chunk([], usage=_usage(gen, completions).model_dump())
            yield event("[DONE]")
        finally:
            for t in tasks:
                t.cancel()

    def on_close() -> None:  # finished, or the client left: free the slots of what is still running
        _abandon(ctx, [r for r in requests if not r.done], who)
        hold.release()

    return EventStream(events(), on_close)


def _text_logprobs(logprobs: Sequence[TokenLogprob], offset: int) -> dict:
    """The legacy completions format: parallel lists of tokens, their log-probabilities and top alternatives.

    A token's text is its share of the completion's text (a word start with its space; "" for all but the last
    byte piece of a character), so the tokens join into the text and `text_offset` indexes it."""
    offsets, at = [], offset
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.text)
    return {
        "tokens": [lp.text for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{text: v for _, text, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _chat_logprobs(logprobs: Sequence[TokenLogprob]) -> dict:
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(lp.text, lp.logprob), "top_logprobs": [entry(text, v) for _, text, v in lp.top]} for lp in logprobs
        ]
    }


# ---- routes --------------------------------------------------------------------------------------------


def routes(ctx) -> list[Route]:
    async def run(request: Request, gen: Generation) -> Response:
        who = ctx.caller(request)
        return _streamed(ctx, gen, who) if gen.stream else await _whole(ctx, gen, request, who)

    @endpoint(body=TextCompletion, response=TextAnswer, media_types=STREAMED, errors=MODEL_ERRORS, scope="generate")
    async def completions(request: Request, body: TextCompletion) -> Response:
        """Complete one or more prompts (OpenAI's completions API; `stream: true` for Server-Sent Events)."""
        return await run(request, parse_completion(ctx, body))

    @endpoint(body=ChatCompletion, response=ChatAnswer, media_types=STREAMED, errors=MODEL_ERRORS, scope="generate")
    async def chat_completions(request: Request, body: ChatCompletion) -> Response:
        """Reply to a conversation, rendered by the model's chat template (OpenAI's chat completions API)."""
        return await run(request, parse_chat(ctx, body))

    return [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
