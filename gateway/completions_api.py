"""POST /v1/chat/completions and /v1/completions: admit -> submit -> answer.

The two endpoints differ only in how they read a body (gateway/parsing.py)
and write a response (gateway/render.py); the answer itself, one JSON body
or an SSE stream fed by the jobs' relays, is the same code for both.

A legacy batch (a list of prompts) is one job per prompt, all queued at
once and relayed one after the other; choice indices run on across them
(n per prompt), and the usage sums them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import queue_position, render, state
from gateway.admission import admit
from gateway.choices import Calls, CallStart, ChoiceState, Collected, Content
from gateway.errors import JobFailed, end_error
from gateway.parsing import parse_chat, parse_completion
from gateway.relay import Idle, Text
from gateway.submit import submit
from streamworker.protocol.outcomes import EndCode, JobStatus
from streamworker.protocol.wire import End, JobKind, LogEntry, Status

if TYPE_CHECKING:
    from gateway.choices import Out
    from gateway.parsing import NewJob, Parser
    from gateway.relay import Relay
    from gateway.render import Renderer, RendererFactory
    from gateway.state import GatewayState


def _no_result() -> JobFailed:
    return JobFailed("The job ended without a result.")


_NO_RESULT = End(
    status=JobStatus.FAILED.value,
    code=EndCode.JOB_FAILED.value,
    message="The job ended without a result.",
)


def _deadline(st: GatewayState, job: NewJob) -> float:
    """When the gateway expires the job itself, should no worker have done
    so (a second after the job's own deadline)."""
    return time.time() + (job.timeout or st.queue_settings.job_timeout_seconds) + 1


async def _expire_if_late(relay: Relay, deadline: float) -> None:
    if time.time() >= deadline:
        await relay.jobs.cancel(relay.model, relay.job_id, JobStatus.EXPIRED)


class Answer:
    """The jobs of one request, seen as one answer: their choices numbered
    in order, their ends joined into one (the first failure ends it all)."""

    def __init__(self, job: NewJob, relays: list[Relay]) -> None:
        self.job = job
        self.relays = relays
        self.n = job.request.params.n
        self.states = [
            ChoiceState(job.tools, streaming=job.stream) for _ in range(self.n * len(relays))
        ]
        self.reasons: list[str | None] = [None] * len(self.states)
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @property
    def choices(self) -> int:
        return len(self.states)

    def usage(self) -> render.Usage:
        return render.usage(self.prompt_tokens, self.completion_tokens)

    def _ended(self, k: int, end: End) -> list[tuple[int, Out]]:
        """Job k completed: its reasons and usage, and what its choices held."""
        self.prompt_tokens += end.prompt_tokens
        self.completion_tokens += end.completion_tokens
        reasons = end.finish_reasons or [end.finish_reason or ""]
        outs: list[tuple[int, Out]] = []
        for c in range(self.n):
            index = k * self.n + c
            state_ = self.states[index]
            outs += [(index, o) for o in state_.finish()]
            reason = reasons[c] if c < len(reasons) else end.finish_reason
            self.reasons[index] = state_.finish_reason(reason or None)
        return outs

    async def events(self, deadline: float) -> AsyncIterator[tuple[int, Out] | Idle | Status | End]:
        """(choice index, output) pairs as they come, keep-alive events, and
        at last one End: completed for the whole answer, or the first
        failure."""
        for k, relay in enumerate(self.relays):
            async for item in relay:
                if isinstance(item, Text):
                    by_choice: dict[int, list[LogEntry]] = {}
                    for e in item.entries:
                        by_choice.setdefault(k * self.n + e.choice, []).append(e)
                    for index, entries in by_choice.items():
                        if index < len(self.states):
                            for out in self.states[index].feed(entries):
                                yield index, out
                elif isinstance(item, Idle | Status):
                    if isinstance(item, Idle):
                        await _expire_if_late(relay, deadline)
                    yield item
                elif isinstance(item, End):
                    if item.status != JobStatus.COMPLETED:
                        yield item
                        return
                    for pair in self._ended(k, item):
                        yield pair
                    break
            else:  # the relay stopped without an end
                yield _NO_RESULT
                return
        yield End(status=JobStatus.COMPLETED.value)


def _frames(out: Renderer, index: int, piece: Out) -> bytes:
    if isinstance(piece, Content):
        return out.content(index, piece.text, piece.entries)
    if isinstance(piece, Calls):
        return out.calls(index, piece.calls)
    if isinstance(piece, CallStart):
        return out.call_start(index, piece.call, piece.id, piece.name)
    return out.call_args(index, piece.call, piece.text)


def _job_ids(relays: list[Relay]) -> str:
    return ", ".join(r.job_id for r in relays)


async def _collect(st: GatewayState, answer: Answer, out: Renderer) -> web.Response:
    collected = [Collected(i) for i in range(answer.choices)]
    async with contextlib.aclosing(answer.events(_deadline(st, answer.job))) as events:
        async for item in events:
            if isinstance(item, tuple):
                collected[item[0]].add([item[1]])
            elif isinstance(item, End):
                if item.status != JobStatus.COMPLETED:
                    raise end_error(item)
                finished = [render.Finished(c, answer.reasons[c.index]) for c in collected]
                return web.Response(
                    body=out.body(finished, answer.usage()),
                    content_type="application/json",
                    headers={"X-Job-Id": _job_ids(answer.relays)},
                )
    raise _no_result()


async def _stream(
    request: web.Request, st: GatewayState, answer: Answer, out: Renderer
) -> web.StreamResponse:
    relays = answer.relays
    response = web.StreamResponse(headers={**render.SSE_HEADERS, "X-Job-Id": _job_ids(relays)})
    await response.prepare(request)
    if opening := out.opening(answer.choices):
        await response.write(opening)
    show_position = queue_position.wanted(request)
    if show_position:
        await response.write(
            await queue_position.comment(st.jobs, relays[0].model, relays[0].job_id)
        )
    first_token = True
    async with contextlib.aclosing(answer.events(_deadline(st, answer.job))) as events:
        async for item in events:
            if isinstance(item, tuple):
                if first_token:
                    first_token = False
                    st.metrics.first_token(request)
                frames = _frames(out, *item)
                if frames:
                    await response.write(frames)
            elif isinstance(item, Idle | Status):
                await response.write(render.KEEP_ALIVE)
                if show_position and isinstance(item, Idle):
                    await response.write(
                        await queue_position.comment(st.jobs, relays[0].model, relays[0].job_id)
                    )
            elif isinstance(item, End):
                if item.status == JobStatus.COMPLETED:
                    usage = answer.usage() if answer.job.include_usage else None
                    await response.write(out.closing(answer.reasons, usage))
                    if trailer := request.get(render.TRAILER):
                        await response.write(trailer)
                else:
                    await response.write(render.error_frame(end_error(item)))
                await response.write(render.DONE)
                await response.write_eof()
                return response
    await response.write(render.error_frame(_no_result()))
    await response.write_eof()
    return response


def _response_id(job_id: str, kind: JobKind) -> str:
    # Legacy completions are `cmpl-...` at OpenAI; the job keeps its own id
    # (X-Job-Id), which is what the jobs API reads.
    if kind is JobKind.COMPLETION:
        return "cmpl-" + job_id.split("-", 1)[-1]
    return job_id


def _nth_key(job: NewJob, i: int) -> str | None:
    """The Idempotency-Key of a batch's i-th job: each prompt is its own job,
    so a retried batch finds each of them again, not the first one n times."""
    key = job.idempotency_key
    return key if key is None or i == 0 else f"{key}#{i}"


def _prompt_chars(job: NewJob) -> int:
    prompt = job.request.prompt
    if job.request.params.echo or not isinstance(prompt, str):
        return 0
    return len(prompt)


async def _answer(
    request: web.Request, parse: Parser, renderer: RendererFactory
) -> web.StreamResponse:
    st = state.of(request.app)
    job = await admit(request, parse)
    jobs = [
        dataclasses.replace(job, request=r, batch=(), idempotency_key=_nth_key(job, i))
        for i, r in enumerate(job.requests)
    ]
    async with contextlib.AsyncExitStack() as stack:
        relays = [await stack.enter_async_context(submit(st, j)) for j in jobs]
        answer = Answer(job, relays)
        out = renderer(
            _response_id(relays[0].job_id, job.request.kind),
            job.model,
            int(time.time()),
            logprobs=job.request.params.logprobs,
            prompt_chars=_prompt_chars(job),
            service_tier=job.tier,
        )
        if job.stream:
            return await _stream(request, st, answer, out)
        return await _collect(st, answer, out)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, parse_chat, render.ChatRenderer)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, parse_completion, render.TextRenderer)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
