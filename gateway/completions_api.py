"""POST /v1/chat/completions and /v1/completions: admit -> submit -> answer.

The two endpoints differ only in how they read a body (gateway/parsing.py)
and write a response (gateway/render.py); the answer itself, one JSON body
or an SSE stream fed by the job's relay, is the same code for both.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import queue_position, render, state
from gateway.admission import admit
from gateway.errors import JobFailed, end_error
from gateway.parsing import parse_chat, parse_completion
from gateway.relay import Idle, Text
from gateway.submit import submit
from streamworker.protocol.outcomes import JobStatus
from streamworker.protocol.wire import End, Status

if TYPE_CHECKING:
    from gateway.parsing import NewJob, Parser
    from gateway.relay import Relay
    from gateway.render import Renderer, RendererFactory
    from gateway.state import GatewayState


def _no_result() -> JobFailed:
    return JobFailed("The job ended without a result.")


def _deadline(st: GatewayState, job: NewJob) -> float:
    """When the gateway expires the job itself, should no worker have done
    so (a second after the job's own deadline)."""
    return time.time() + (job.timeout or st.queue_settings.job_timeout_seconds) + 1


async def _expire_if_late(relay: Relay, deadline: float) -> None:
    if time.time() >= deadline:
        await relay.jobs.cancel(relay.model, relay.job_id, JobStatus.EXPIRED)


async def _collect(st: GatewayState, job: NewJob, relay: Relay, out: Renderer) -> web.Response:
    deadline = _deadline(st, job)
    parts: list[str] = []
    async for item in relay:
        if isinstance(item, Text):
            parts.append(item.text)
        elif isinstance(item, Idle):
            await _expire_if_late(relay, deadline)
        elif isinstance(item, End):
            if item.status != JobStatus.COMPLETED:
                raise end_error(item)
            return web.Response(
                body=out.body("".join(parts), item),
                content_type="application/json",
                headers={"X-Job-Id": relay.job_id},
            )
    raise _no_result()


async def _stream(
    request: web.Request, st: GatewayState, job: NewJob, relay: Relay, out: Renderer
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**render.SSE_HEADERS, "X-Job-Id": relay.job_id})
    await response.prepare(request)
    deadline = _deadline(st, job)
    if opening := out.opening():
        await response.write(opening)
    show_position = queue_position.wanted(request)
    if show_position:
        await response.write(await queue_position.comment(st.jobs, relay.model, relay.job_id))
    first_token = True
    async for item in relay:
        if isinstance(item, Text):
            if first_token:
                first_token = False
                st.metrics.first_token(request)
            if item.text:
                await response.write(out.delta(item.text))
        elif isinstance(item, Idle | Status):
            await response.write(render.KEEP_ALIVE)
            if show_position and isinstance(item, Idle):
                await response.write(
                    await queue_position.comment(st.jobs, relay.model, relay.job_id)
                )
            await _expire_if_late(relay, deadline)
        elif isinstance(item, End):
            if item.status == JobStatus.COMPLETED:
                await response.write(out.closing(item, job.include_usage))
            else:
                await response.write(render.error_frame(end_error(item)))
            await response.write(render.DONE)
            await response.write_eof()
            return response
    await response.write(render.error_frame(_no_result()))
    await response.write_eof()
    return response


async def _answer(
    request: web.Request, parse: Parser, renderer: RendererFactory
) -> web.StreamResponse:
    st = state.of(request.app)
    job = await admit(request, parse)
    async with submit(st, job) as relay:
        out = renderer(relay.job_id, job.model, int(time.time()))
        if job.stream:
            return await _stream(request, st, job, relay, out)
        return await _collect(st, job, relay, out)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, parse_chat, render.ChatRenderer)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, parse_completion, render.TextRenderer)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
