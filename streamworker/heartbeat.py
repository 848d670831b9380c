"""A worker's heartbeat into the registry (protocol/registry.py), and the
health it reports: a worker whose engine died, or whose heartbeats no longer
reach Redis, says so on its /health and leaves the registry."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError

from streamworker.protocol import registry
from streamworker.protocol.record import now_ms
from streamworker.protocol.registry import WorkerInfo

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamworker.engines.base import Engine

log = logging.getLogger("streamworker.heartbeat")


def engine_alive(engine: object) -> bool:
    """Engines that can die under a live process (a decode thread) expose
    `alive()`; the others live exactly as long as the process."""
    alive = getattr(engine, "alive", None)
    return bool(alive()) if callable(alive) else True


class Heartbeat:
    def __init__(
        self,
        redis: Redis,
        engine: Engine,
        *,
        worker_id: str,
        model: str,
        slots: int,
        active: Callable[[], int],
        interval: float,
        gpu: str = "",
        engine_name: str = "",
        chat_format: str = "",
        metrics_port: int = 0,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.worker_id = worker_id
        self.model = model
        self.slots = slots
        self.active = active
        self.interval = interval
        self.ttl_ms = int(interval * 3 * 1000)
        self.gpu = gpu
        self.engine_name = engine_name
        self.chat_format = chat_format
        self.metrics_port = metrics_port
        self.started_at = now_ms()
        self.last_beat = 0.0  # monotonic time of the last heartbeat Redis took

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.worker_id,
            model=self.model,
            host=socket.gethostname(),
            pid=os.getpid(),
            slots=self.slots,
            active=self.active(),
            gpu=self.gpu,
            engine=self.engine_name,
            started_at=self.started_at,
            heartbeat_at=now_ms(),
            n_ctx=int(getattr(self.engine, "n_ctx", 0) or 0),
            model_path=str(getattr(self.engine, "path", "") or ""),
            chat_format=self.chat_format,
            metrics_port=self.metrics_port,
        )

    async def beat(self) -> None:
        await registry.publish(self.redis, self.info(), self.ttl_ms)

    async def run(self) -> None:
        """Beat every `interval` until cancelled, or until the engine dies."""
        while True:
            if not engine_alive(self.engine):
                # No green light over a dead engine: leave the registry at once
                # instead of waiting for the TTL.
                log.error("engine stopped: no more heartbeats")
                await self.withdraw()
                return
            try:
                await self.beat()
                self.last_beat = time.monotonic()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed (%s)", exc)
            await anyio.sleep(self.interval)

    def health(self) -> str | None:
        """None when this worker is fine, else why not (its /health says it)."""
        if not engine_alive(self.engine):
            return "engine stopped"
        if time.monotonic() - self.last_beat > self.ttl_ms / 1000:
            return "heartbeat not reaching redis"
        return None

    async def withdraw(self) -> None:
        try:
            await registry.withdraw(self.redis, self.worker_id)
        except (RedisError, OSError):
            pass  # the TTL removes it anyway
