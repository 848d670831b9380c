"""POST /v1/chat/completions (and /v1/completions): validate -> enqueue -> relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from aiohttp import web
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from gateway import queue_position, security, state
from gateway.auth import owner_of
from gateway.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ContextLengthExceeded,
    JobFailed,
    QueueFull,
    ServiceUnavailable,
    Timeout,
)
from gateway.openai_types import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    CompletionRequest,
    Delta,
    Usage,
)
from gateway.relay import Idle, Relay, Text
from gateway.settings import GatewaySettings
from streamworker.protocol import client as jobclient
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import JobStatus
from streamworker.protocol.record import new_job_id
from streamworker.protocol.wire import End, GenerationParams, JobRequest, Message, Status

log = logging.getLogger("gateway.chat")

T = TypeVar("T")

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ChatJob:
    model: str
    request: JobRequest
    stream: bool
    include_usage: bool
    timeout: float | None


def _param_of(exc: msgspec.ValidationError) -> str | None:
    text = str(exc)
    if "`$." in text:
        return text.rsplit("`$.", 1)[1].rstrip("`")
    return None


def decode_body(body: bytes, cls: type[T]) -> T:
    if not body.strip():
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request: {exc}", param=_param_of(exc)) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None


def _text_of(msg: ChatMessage, index: int) -> str:
    if isinstance(msg.content, str):
        return msg.content
    if msg.content is None:
        raise BadRequest("Message content is required.", param=f"messages[{index}].content")
    parts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise BadRequest(
                f"Content part type '{part.type}' is not supported; only 'text'.",
                param=f"messages[{index}].content",
            )
        parts.append(part.text)
    return "".join(parts)


def _stops(stop: str | list[str] | None, settings: GatewaySettings) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > settings.max_stop_sequences:
        raise BadRequest(
            f"At most {settings.max_stop_sequences} stop sequences are allowed.", param="stop"
        )
    return tuple(s for s in stops if s)


def _max_tokens(value: int | None, settings: GatewaySettings, param: str) -> int:
    if value is None:
        return settings.default_max_tokens
    if value > settings.max_tokens_limit:
        raise BadRequest(f"{param} must be at most {settings.max_tokens_limit}.", param=param)
    return value


def _common_checks(n: int, timeout: float | None, settings: GatewaySettings) -> None:
    if n != 1:
        raise BadRequest("Only n=1 is supported.", param="n")
    if timeout is not None and timeout > settings.max_timeout_seconds:
        raise BadRequest(
            f"timeout must be at most {settings.max_timeout_seconds} seconds.", param="timeout"
        )


def parse_chat(body: bytes, settings: GatewaySettings) -> ChatJob:
    req = decode_body(body, ChatCompletionRequest)
    _common_checks(req.n, req.timeout, settings)
    if req.tools:
        raise BadRequest("Tool calling is not supported.", param="tools")
    if req.logprobs:
        raise BadRequest("logprobs are not supported.", param="logprobs")
    if not req.messages:
        raise BadRequest("messages must contain at least one message.", param="messages")
    if len(req.messages) > settings.max_messages:
        raise BadRequest(f"At most {settings.max_messages} messages are allowed.", param="messages")
    messages = []
    for i, m in enumerate(req.messages):
        role = ROLES.get(m.role)
        if role is None:
            raise BadRequest(
                f"Unknown role '{m.role}'; expected one of system, user, assistant.",
                param=f"messages[{i}].role",
            )
        text = _text_of(m, i)
        if len(text) > settings.max_message_chars:
            raise BadRequest(
                f"Message {i} is longer than {settings.max_message_chars} characters.",
                param=f"messages[{i}].content",
            )
        messages.append(Message(role, text))
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    return _job(req, settings, messages, _max_tokens(limit, settings, param))


def parse_completion(body: bytes, settings: GatewaySettings) -> ChatJob:
    req = decode_body(body, CompletionRequest)
    _common_checks(req.n, req.timeout, settings)
    prompt = req.prompt if isinstance(req.prompt, str) else "".join(req.prompt)
    if len(prompt) > settings.max_message_chars:
        raise BadRequest("The prompt is too long.", param="prompt")
    max_tokens = _max_tokens(req.max_tokens, settings, "max_tokens")
    return _job(req, settings, [Message("user", prompt)], max_tokens)


def _job(
    req: ChatCompletionRequest | CompletionRequest,
    settings: GatewaySettings,
    messages: list[Message],
    max_tokens: int,
) -> ChatJob:
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=_stops(req.stop, settings),
        # Pin a seed even when the client sent none, so a rerun after a crash
        # samples the same way where the engine allows.
        seed=req.seed if req.seed is not None else random.randrange(1 << 31),
    )
    return ChatJob(
        model=req.model,
        request=JobRequest(messages=messages, params=params),
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        timeout=req.timeout,
    )


async def enqueue_job(
    app: web.Application,
    job: ChatJob,
    job_id: str,
    *,
    owner: str = "",
    idempotency_key: str | None = None,
) -> tuple[str, bool]:
    """Enqueue atomically with the queue bound. Returns (job id, created):
    a retried Idempotency-Key returns the first job's id and False."""
    # Context length and per-key rate limits: refused here, nothing enqueued.
    job = await security.admit(app, job, job_id)
    st = state.of(app)
    capacity = await st.models.require(job.model)
    settings = st.settings
    max_queue = settings.max_queue or settings.max_queue_per_slot * capacity
    try:
        return await st.jobs.enqueue(
            job.model,
            job_id,
            job.request,
            owner=owner,
            timeout_seconds=job.timeout,
            max_queue=max_queue,
            idempotency_key=idempotency_key,
        )
    except jobclient.QueueFull as full:
        st.metrics.rejected.inc()
        raise QueueFull(
            f"The queue for model '{job.model}' is full ({full.depth} jobs waiting); retry later.",
            headers={"Retry-After": str(_retry_after(full.depth, capacity))},
        ) from None
    except ResponseError as exc:
        if isinstance(exc, OutOfMemoryError) or "OOM" in str(exc):
            # maxmemory with noeviction: Redis refuses writes rather than
            # evicting jobs; tell the client plainly.
            raise ServiceUnavailable(
                "The queue is out of memory and cannot accept jobs; retry later.",
                code="queue_out_of_memory",
                headers={"Retry-After": "10"},
            ) from None
        raise
    except (RedisError, OSError) as exc:
        raise _unavailable() from exc


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The queue is unavailable; retry later.", headers={"Retry-After": "2"}
    )


@contextlib.asynccontextmanager
async def subscribed(app: web.Application, model: str, job_id: str) -> AsyncIterator[Relay]:
    """A relay for an existing job (its channel subscribed for the block)."""
    st = state.of(app)
    try:
        cm = st.hub.subscribe(model_keys(model).channel(job_id))
        inbox = await cm.__aenter__()
    except (RedisError, OSError, TimeoutError) as exc:
        raise _unavailable() from exc
    try:
        yield Relay(st.jobs, model, job_id, inbox, keepalive=st.settings.sse_keepalive_seconds)
    finally:
        await cm.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def submit(
    app: web.Application, job: ChatJob, *, owner: str = "", idempotency_key: str | None = None
) -> AsyncIterator[tuple[str, Relay]]:
    """Subscribe the job's channel, then enqueue it, then hand back a relay.
    Subscribing first means no event of the job can be missed."""
    job_id = new_job_id()
    async with subscribed(app, job.model, job_id) as relay:
        final_id, _created = await enqueue_job(
            app, job, job_id, owner=owner, idempotency_key=idempotency_key
        )
        if final_id == job_id:
            yield job_id, relay
            return
    # A retried Idempotency-Key: relay the first job (its log replays what
    # was already sent, then live events).
    async with subscribed(app, job.model, final_id) as relay:
        relay.resume = True
        yield final_id, relay


def _retry_after(depth: int, capacity: int) -> int:
    return max(1, min(60, depth // max(capacity, 1)))


def end_error(end: End) -> ApiError:
    """A job's unhappy end, as the error a client gets."""
    if end.status == "expired":
        return Timeout(end.message or "The job reached its deadline.", code="timeout")
    if end.status == "cancelled":
        return Conflict(end.message or "The job was cancelled.", code="cancelled")
    if end.code == "context_length_exceeded":
        return ContextLengthExceeded(end.message or "The prompt is too long.", param="messages")
    return JobFailed(end.message or "The job failed.")


async def _cancel_quietly(app: web.Application, model: str, job_id: str) -> None:
    with contextlib.suppress(RedisError, OSError):
        await state.of(app).jobs.cancel(model, job_id)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = state.of(request.app)
    job = parse_chat(await request.read(), st.settings)
    return await _run(request, job, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    st = state.of(request.app)
    job = parse_completion(await request.read(), st.settings)
    return await _run(request, job, chat=False)


async def _run(request: web.Request, job: ChatJob, *, chat: bool) -> web.StreamResponse:
    app = request.app
    idem = request.headers.get("Idempotency-Key")
    owner = owner_of(request)
    async with submit(app, job, owner=owner, idempotency_key=idem) as (job_id, relay):
        finished = False
        try:
            if job.stream:
                response = await _stream(request, job, job_id, relay, chat=chat)
            else:
                response = await _collect(request, job, job_id, relay, chat=chat)
            finished = True
            return response
        finally:
            if not finished:
                # The client went away (or we failed): stop the job, shielded
                # from the cancellation that got us here.
                await asyncio.shield(_cancel_quietly(app, job.model, job_id))


async def _collect(
    request: web.Request, job: ChatJob, job_id: str, relay: Relay, *, chat: bool
) -> web.Response:
    queue_settings = state.of(request.app).queue_settings
    app_deadline = time.time() + (job.timeout or queue_settings.job_timeout_seconds) + 1
    parts: list[str] = []
    created = int(time.time())
    async for item in relay:
        if isinstance(item, Text):
            parts.append(item.text)
        elif isinstance(item, Idle):
            if time.time() >= app_deadline:
                await relay.jobs.cancel(job.model, job_id, JobStatus.EXPIRED)
        elif isinstance(item, End):
            if item.status != "completed":
                raise end_error(item)
            usage = Usage(
                item.prompt_tokens,
                item.completion_tokens,
                item.prompt_tokens + item.completion_tokens,
            )
            text = "".join(parts)
            if chat:
                body = ChatCompletion(
                    id=job_id,
                    object="chat.completion",
                    created=created,
                    model=job.model,
                    usage=usage,
                    choices=[Choice(0, AssistantMessage("assistant", text), item.finish_reason)],
                )
                return web.Response(
                    body=_encoder.encode(body),
                    content_type="application/json",
                    headers={"X-Job-Id": job_id},
                )
            return web.json_response(
                {
                    "id": job_id,
                    "object": "text_completion",
                    "created": created,
                    "model": job.model,
                    "usage": msgspec.to_builtins(usage),
                    "choices": [
                        {
                            "index": 0,
                            "text": text,
                            "logprobs": None,
                            "finish_reason": item.finish_reason,
                        }
                    ],
                },
                headers={"X-Job-Id": job_id},
            )
    raise JobFailed("The job ended without a result.")


def _sse(obj: object) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"


async def _stream(
    request: web.Request, job: ChatJob, job_id: str, relay: Relay, *, chat: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer SSE
            "X-Job-Id": job_id,
        }
    )
    await response.prepare(request)
    created = int(time.time())
    st = state.of(request.app)
    deadline = time.time() + (job.timeout or st.queue_settings.job_timeout_seconds) + 1

    def chunk(delta: Delta, finish: str | None = None) -> bytes:
        if chat:
            return _sse(
                ChatCompletionChunk(
                    id=job_id,
                    object="chat.completion.chunk",
                    created=created,
                    model=job.model,
                    choices=[ChunkChoice(0, delta, finish_reason=finish)],
                )
            )
        return _sse(
            {
                "id": job_id,
                "object": "text_completion",
                "created": created,
                "model": job.model,
                "choices": [
                    {
                        "index": 0,
                        "text": delta.content or "",
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
            }
        )

    if chat:
        await response.write(chunk(Delta(role="assistant", content="")))
    show_position = queue_position.wanted(request)
    if show_position:
        await response.write(await queue_position.comment(st.jobs, job.model, job_id))
    first_token = True
    async for item in relay:
        if isinstance(item, Text):
            if first_token:
                first_token = False
                st.metrics.first_token(request)
            if item.text:
                await response.write(chunk(Delta(content=item.text)))
        elif isinstance(item, (Idle, Status)):
            await response.write(b": keep-alive\n\n")
            if show_position and isinstance(item, Idle):
                await response.write(await queue_position.comment(st.jobs, job.model, job_id))
            if time.time() >= deadline:
                await relay.jobs.cancel(job.model, job_id, JobStatus.EXPIRED)
        elif isinstance(item, End):
            if item.status == "completed":
                await response.write(chunk(Delta(), item.finish_reason))
                if job.include_usage:
                    usage = Usage(
                        item.prompt_tokens,
                        item.completion_tokens,
                        item.prompt_tokens + item.completion_tokens,
                    )
                    await response.write(
                        _sse(
                            ChatCompletionChunk(
                                id=job_id,
                                object="chat.completion.chunk",
                                created=created,
                                model=job.model,
                                choices=[],
                                usage=usage,
                            )
                            if chat
                            else {
                                "id": job_id,
                                "object": "text_completion",
                                "created": created,
                                "model": job.model,
                                "choices": [],
                                "usage": msgspec.to_builtins(usage),
                            }
                        )
                    )
            else:
                await response.write(_sse(end_error(item).body()))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
    await response.write(_sse(JobFailed("The job ended without a result.").body()))
    await response.write_eof()
    return response
