"""The opt-in queue position (request header `X-Queue-Position: true`).

Sent as an SSE comment (`: queue-position N`), which every SSE client ignores
unless it looks for it, so the OpenAI stream format stays intact. N estimates
the jobs that start before it, plus itself, from the higher tiers and the
fair shares of its own tier (1: next to start; lua/queue_position.lua). The
count runs inside Redis (nothing but the number crosses the network), is
bounded by MAX_QUEUE; it is asked only at keep-alive intervals, only for
clients that opted in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from aiohttp import web

    from streamworker.protocol.client import JobClient

HEADER = "X-Queue-Position"


def wanted(request: web.Request) -> bool:
    return request.headers.get(HEADER, "").lower() in ("1", "true", "yes")


async def comment(jobs: JobClient, model: str, job_id: str) -> bytes:
    """The SSE comment to send, or b'' when the job is not queued (or Redis
    is away: the position is a courtesy, never a reason to fail a stream)."""
    try:
        n = await jobs.position(model, job_id)
    except (RedisError, OSError):
        return b""
    return b"" if n is None else f": queue-position {n}\n\n".encode()
