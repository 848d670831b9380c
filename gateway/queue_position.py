"""The opt-in queue position (request header `X-Queue-Position: true`).

Sent as an SSE comment (`: queue-position N`), which every SSE client ignores
unless it looks for it, so the OpenAI stream format stays intact. N counts
the undelivered stream entries up to and including the job's own (1: next to
start; 0: a worker has taken it). The count runs inside Redis (nothing but
the number crosses the network), costs O(N) and is bounded by MAX_QUEUE; it
is asked only at keep-alive intervals, only for clients that opted in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from streamworker import keys
from streamworker.queue import model_keys

if TYPE_CHECKING:
    from aiohttp import web
    from redis.asyncio import Redis

HEADER = "X-Queue-Position"
LIMIT = 100_000

_POSITION = """
local st = redis.call('HMGET', KEYS[2], 'status', 'entry_id')
if st[1] ~= 'queued' or not st[2] then return -1 end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
return #redis.call('XRANGE', KEYS[1], '(' .. last, st[2], 'COUNT', tonumber(ARGV[2]))
"""


def wanted(request: web.Request) -> bool:
    return request.headers.get(HEADER, "").lower() in ("1", "true", "yes")


async def position(redis: Redis, model: str, job_id: str) -> int | None:
    """The job's place in the queue, or None once it is no longer queued."""
    k = model_keys(model)
    n = int(
        await redis.register_script(_POSITION)(
            keys=[k.stream, k.job(job_id)], args=[keys.GROUP, LIMIT]
        )
    )
    return None if n < 0 else n


async def comment(redis: Redis, model: str, job_id: str) -> bytes:
    """The SSE comment to send, or b'' when the job is not queued (or Redis
    is away: the position is a courtesy, never a reason to fail a stream)."""
    try:
        n = await position(redis, model, job_id)
    except (RedisError, OSError):
        return b""
    return b"" if n is None else f": queue-position {n}\n\n".encode()
