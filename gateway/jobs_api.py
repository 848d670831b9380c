"""The async jobs API: submit now, read or stream the result later:

POST /v1/jobs               same body as chat completions -> 202 {id, status}
GET  /v1/jobs/{id}          status, attempts, timestamps, result, usage
GET  /v1/jobs/{id}/events   SSE with `id:` = sequence number; Last-Event-ID resumes
DELETE /v1/jobs/{id}        cancel

A job created under an API key belongs to that key: to any other key every
route answers 404 job_not_found, as for a job that does not exist.
"""

from __future__ import annotations

import contextlib

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway import state
from gateway.admission import admit
from gateway.auth import owner_of
from gateway.errors import BadRequest, NotFound, ServiceUnavailable, end_error
from gateway.parsing import parse_chat
from gateway.relay import Idle, Text
from gateway.submit import enqueue, subscribed
from streamworker.protocol.record import JobRecord, new_job_id
from streamworker.protocol.wire import End, Status

_encoder = msgspec.json.Encoder()


def job_view(record: JobRecord) -> dict[str, object]:
    done = record.status.value == "completed"
    return {
        "id": record.id,
        "object": "job",
        "model": record.model,
        "status": record.status.value,
        "attempt": record.attempt,
        "failures": record.failures,
        "worker": record.worker,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "deadline": record.deadline,
        "result": {"text": record.text, "finish_reason": record.finish_reason} if done else None,
        "usage": {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
        }
        if done
        else None,
        "error": record.error or record.last_error,
    }


async def _find(request: web.Request) -> tuple[str, JobRecord]:
    """The job the path names, if the caller may see it (every jobs route)."""
    st = state.of(request.app)
    job_id = request.match_info["job_id"]
    try:
        model = await st.jobs.model_of(job_id)
        record = await st.jobs.record(model, job_id) if model else None
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("The queue is unavailable; retry later.") from exc
    # Another key's job gets the very answer a missing one does, so a caller
    # cannot even learn that an id exists.
    if model is None or record is None or not record.visible_to(owner_of(request)):
        raise NotFound(f"No job with id '{job_id}'.", param="job_id", code="job_not_found")
    return model, record


async def create_job(request: web.Request) -> web.Response:
    st = state.of(request.app)
    job = await admit(request, parse_chat)
    job_id, created = await enqueue(st, job, new_job_id())
    record = await st.jobs.record(job.model, job_id)
    body = job_view(record) if record else {"id": job_id, "object": "job", "status": "queued"}
    return web.json_response(
        body,
        status=202 if created else 200,
        headers={"Location": f"/v1/jobs/{job_id}", "X-Job-Id": job_id},
    )


async def get_job(request: web.Request) -> web.Response:
    _, record = await _find(request)
    return web.json_response(job_view(record))


async def cancel_job(request: web.Request) -> web.Response:
    st = state.of(request.app)
    model, record = await _find(request)
    outcome = await st.jobs.cancel(model, record.id)
    record = await st.jobs.record(model, record.id) or record
    body = job_view(record)
    body["cancel"] = outcome  # 'cancelled' now, 'cancelling' (running), or the final status
    return web.json_response(body)


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None:
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID must be an integer sequence number.", param="Last-Event-ID"
        ) from None
    if value < -1:
        raise BadRequest("Last-Event-ID must be >= -1.", param="Last-Event-ID")
    return value


async def job_events(request: web.Request) -> web.StreamResponse:
    model, record = await _find(request)
    start = _last_event_id(request) + 1
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Job-Id": record.id,
        }
    )
    async with subscribed(state.of(request.app), model, record.id) as relay:
        relay.next_seq = start
        relay.resume = True
        await response.prepare(request)
        async for item in relay:
            if isinstance(item, Text):
                data = _encoder.encode({"seq": item.seq, "text": item.text})
                await response.write(b"id: %d\nevent: token\ndata: %s\n\n" % (item.seq, data))
            elif isinstance(item, Status):
                await response.write(b"event: status\ndata: %s\n\n" % _encoder.encode(item))
            elif isinstance(item, Idle):
                await response.write(b": keep-alive\n\n")
            elif isinstance(item, End):
                body: dict[str, object] = {"status": item.status}
                if item.status == "completed":
                    body |= {
                        "finish_reason": item.finish_reason,
                        "usage": {
                            "prompt_tokens": item.prompt_tokens,
                            "completion_tokens": item.completion_tokens,
                        },
                    }
                else:
                    body |= end_error(item).body()
                await response.write(b"event: end\ndata: %s\n\n" % _encoder.encode(body))
                break
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/v1/jobs/{job_id}", cancel_job)
    app.router.add_get("/v1/jobs/{job_id}/events", job_events)
