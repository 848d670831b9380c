"""The worker registry: each worker heartbeats who it is, what model it
serves, its capacity and load, and its GPU, under a TTL. A worker that dies,
or whose engine dies, stops heartbeating and drops out within the TTL."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

import anyio
import msgspec
from redis.exceptions import RedisError

from streamworker import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamworker.worker import Worker

log = logging.getLogger("streamworker.registry")


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


class Registry:
    def __init__(self, redis: Redis, *, interval: float, gpu: str = "", engine: str = "") -> None:
        self.redis = redis
        self.interval = interval
        self.ttl_ms = int(interval * 3 * 1000)
        self.gpu = gpu
        self.engine = engine
        self.started_at = int(time.time() * 1000)

    def info(self, worker: Worker) -> WorkerInfo:
        return WorkerInfo(
            id=worker.consumer, model=worker.model, host=socket.gethostname(), pid=os.getpid(),
            slots=worker.slots, active=len(worker.active), gpu=self.gpu, engine=self.engine,
            started_at=self.started_at, heartbeat_at=int(time.time() * 1000),
        )

    async def beat(self, worker: Worker) -> None:
        info = self.info(worker)
        key = keys.worker(info.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=msgspec.to_builtins(info))
            pipe.pexpire(key, self.ttl_ms)
            pipe.zadd(keys.WORKERS, {info.id: info.heartbeat_at})
            await pipe.execute()

    async def heartbeat_loop(self, worker: Worker) -> None:
        while True:
            try:
                await self.beat(worker)
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed (%s)", exc)
            await anyio.sleep(self.interval)

    async def unregister(self, worker: Worker) -> None:
        try:
            await self.redis.delete(keys.worker(worker.consumer))
            await self.redis.zrem(keys.WORKERS, worker.consumer)
        except (RedisError, OSError):
            pass  # the TTL removes it anyway


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
            msgspec.convert({k.decode(): v.decode() for k, v in row.items()}, WorkerInfo,
                            strict=False)
        )
    if gone:
        await redis.zrem(keys.WORKERS, *gone)
    return out
