"""The worker registry: who serves which model, with what capacity.

Each worker writes its `WorkerInfo` under a TTL (streamworker/heartbeat.py)
and lists itself in `keys.WORKERS`; the gateway reads the live ones to route
(404 for a model never served, 503 for one with no live worker) and to size
the queue bound. A worker that dies drops out when its TTL runs out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from streamworker.protocol import keys
from streamworker.protocol.connections import is_cluster

if TYPE_CHECKING:
    from redis.asyncio import Redis


class WorkerInfo(msgspec.Struct, kw_only=True):
    id: str
    model: str
    host: str
    pid: int
    slots: int
    active: int
    gpu: str = ""
    engine: str = ""
    started_at: int = 0
    heartbeat_at: int = 0
    # What the gateway needs to count prompt tokens exactly as this worker
    # does before enqueue: the context size, the model file and the chat
    # format the worker renders prompts with (empty: the model's template).
    n_ctx: int = 0
    model_path: str = ""
    chat_format: str = ""
    # Where this worker serves /metrics and /health (0: nowhere): chosen at
    # start when WORKER_METRICS_PORT is unset, so only the worker knows it.
    metrics_port: int = 0


async def publish(redis: Redis, info: WorkerInfo, ttl_ms: int) -> None:
    """One heartbeat: the worker's info, alive for `ttl_ms`."""
    key = keys.worker(info.id)
    # The hash first, then the index: the two keys may live on different
    # Redis Cluster masters, so no transaction holds both; in this order a
    # reader never finds an id in the index whose hash was not yet written
    # (which it would take for a dead worker and drop).
    # On a cluster no MULTI (see connections.key_owner): the hash and its TTL
    # go in one pipeline, in order, and the next heartbeat repairs a partial one.
    async with redis.pipeline(transaction=not is_cluster(redis)) as pipe:
        pipe.hset(key, mapping=msgspec.to_builtins(info))
        pipe.pexpire(key, ttl_ms)
        await pipe.execute()
    await redis.zadd(keys.WORKERS, {info.id: info.heartbeat_at})


async def withdraw(redis: Redis, worker_id: str) -> None:
    """Leave the registry now rather than when the TTL runs out."""
    await redis.delete(keys.worker(worker_id))
    await redis.zrem(keys.WORKERS, worker_id)


async def live_workers(redis: Redis) -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired."""
    ids = await redis.zrange(keys.WORKERS, 0, -1)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for wid in ids:
            pipe.hgetall(keys.worker(wid.decode()))
        rows = await pipe.execute()
    out, gone = [], []
    for wid, row in zip(ids, rows, strict=True):
        if not row:
            gone.append(wid)
            continue
        out.append(
            msgspec.convert(
                {k.decode(): v.decode() for k, v in row.items()}, WorkerInfo, strict=False
            )
        )
    if gone:
        await redis.zrem(keys.WORKERS, *gone)
    return out
