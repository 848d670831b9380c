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
    # What the gateway needs to check prompts against the context before
    # enqueue (gateway/context_window.py): context size and the model file.
    n_ctx: int = 0
    model_path: str = ""


class Registry:
    def __init__(self, redis: Redis, *, interval: float, gpu: str = "", engine: str = "") -> None:
        self.redis = redis
        self.interval = interval
        self.ttl_ms = int(interval * 3 * 1000)
        self.gpu = gpu
        self.engine = engine
        self.started_at = int(time.time() * 1000)
        self.last_beat = 0.0  # monotonic time of the last heartbeat Redis took

    def info(self, worker: Worker) -> WorkerInfo:
        return WorkerInfo(
            id=worker.consumer,
            model=worker.model,
            host=socket.gethostname(),
            pid=os.getpid(),
            slots=worker.slots,
            active=len(worker.active),
            gpu=self.gpu,
            engine=self.engine,
            started_at=self.started_at,
            heartbeat_at=int(time.time() * 1000),
            n_ctx=int(getattr(worker.engine, "n_ctx", 0) or 0),
            model_path=str(getattr(worker.engine, "path", "") or ""),
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
            if not engine_alive(worker.engine):
                # No green light over a dead engine (vLLM #39863): leave the
                # registry at once instead of waiting for the TTL.
                log.error("engine stopped: no more heartbeats")
                await self.unregister(worker)
                return
            try:
                await self.beat(worker)
                self.last_beat = time.monotonic()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed (%s)", exc)
            await anyio.sleep(self.interval)

    def health(self, worker: Worker) -> str | None:
        """None when this worker is fine, else why not (its /health says it)."""
        if not engine_alive(worker.engine):
            return "engine stopped"
        if time.monotonic() - self.last_beat > self.ttl_ms / 1000:
            return "heartbeat not reaching redis"
        return None

    async def unregister(self, worker: Worker) -> None:
        try:
            await self.redis.delete(keys.worker(worker.consumer))
            await self.redis.zrem(keys.WORKERS, worker.consumer)
        except (RedisError, OSError):
            pass  # the TTL removes it anyway


def engine_alive(engine: object) -> bool:
    """Engines that can die under a live process (a decode thread) expose
    `alive()`; the others live exactly as long as the process."""
    alive = getattr(engine, "alive", None)
    return bool(alive()) if callable(alive) else True


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
