"""A worker's heartbeat into the registry (protocol/registry.py), and the
health it reports: a worker whose engine died, or whose heartbeats no longer
reach Redis, says so on its /health and leaves the registry."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from streamworker.protocol import registry
from streamworker.protocol.record import now_ms
from streamworker.protocol.registry import WorkerInfo

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamworker.engines.base import Done, Engine, Piece
    from streamworker.protocol.wire import Message

log = logging.getLogger("streamworker.heartbeat")


def engine_alive(engine: object) -> bool:
    """Engines that can die under a live process (a decode thread) expose
    `alive()`; the others live exactly as long as the process."""
    alive = getattr(engine, "alive", None)
    return bool(alive()) if callable(alive) else True


class WatchedEngine:
    """An engine as the worker's health sees it: dead when its decode thread
    is gone (`alive()`), and also when it is stuck: generations are in
    flight but none has produced anything for `stall_seconds`. A decode
    thread blocked in llama.cpp is alive as a thread, yet it serves nothing;
    only its lack of progress shows it. The clock is the whole engine's, not
    one job's: jobs waiting on a single-sequence engine's lock make no
    progress of their own while another job runs. `stall_seconds` must
    exceed the longest prompt's prefill (0: never judged stuck).

    Everything else is the wrapped engine's (attribute access passes through)."""

    def __init__(self, engine: Engine, stall_seconds: float) -> None:
        self.inner = engine
        self.stall_seconds = stall_seconds
        self.in_flight = 0
        self.last_progress = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_prompt_tokens(messages)

    def close(self) -> None:
        self.inner.close()

    def stalled(self) -> bool:
        return (
            self.stall_seconds > 0
            and self.in_flight > 0
            and time.monotonic() - self.last_progress > self.stall_seconds
        )

    def alive(self) -> bool:
        return engine_alive(self.inner) and not self.stalled()

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Piece | Done]:
        # The engine protocol's arguments, passed as they come.
        if self.in_flight == 0:  # an idle engine was not stuck meanwhile
            self.last_progress = time.monotonic()
        self.in_flight += 1
        try:
            items = self.inner.generate(*args, **kwargs)
            async with contextlib.aclosing(items) as pieces:  # type: ignore[type-var]
                async for item in pieces:
                    self.last_progress = time.monotonic()
                    yield item
        finally:
            self.in_flight -= 1


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
