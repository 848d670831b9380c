"""One pub/sub connection per gateway process, shared by every request.

Each request subscribes its job's channel here and gets a queue of messages.
SUBSCRIBE waits for Redis's confirmation, so a request that subscribes before
it enqueues cannot miss its job's first event. If the connection drops (Redis
restart), the hub reconnects with backoff, resubscribes every channel, and
puts RESYNC on every queue: pub/sub is at-most-once, so each relay then reads
what it missed from the job's durable log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("gateway.hub")

RESYNC: Final = b"\x00resync"


class Hub:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        # A channel of our own keeps the connection subscribed while idle.
        self._home = f"sw:gateway:{os.getpid()}:{id(self)}".encode()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Read messages forever, reconnecting with backoff."""
        delay = 0.1
        while True:
            try:
                await self._connect()
                delay = 0.1
                await self._read()
            except (RedisError, OSError) as exc:
                log.warning("pub/sub connection lost (%s); reconnecting in %.1fs", exc, delay)
            finally:
                self._connected.clear()
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()
                    self._pubsub = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _connect(self) -> None:
        self._pubsub = self.redis.pubsub()
        channels = [self._home, *self._queues]
        await self._pubsub.subscribe(*channels)
        self._connected.set()
        for queue in self._queues.values():
            queue.put_nowait(RESYNC)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            msg = await self._pubsub.get_message(timeout=None)
            if msg is None:
                continue
            channel = msg["channel"]
            if msg["type"] == "message":
                if (queue := self._queues.get(channel)) is not None:
                    queue.put_nowait(msg["data"])
            elif msg["type"] == "subscribe":
                fut = self._confirm.pop(channel, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Subscribe `channel` for the block; returns once Redis confirmed."""
        key = channel.encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[key] = queue
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=10)
            fut = asyncio.get_running_loop().create_future()
            self._confirm[key] = fut
            assert self._pubsub is not None
            await self._pubsub.subscribe(key)
            # A reconnect in between resubscribes everything and RESYNCs, so a
            # lost confirmation only costs the wait.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout=5)
            yield queue
        finally:
            self._queues.pop(key, None)
            self._confirm.pop(key, None)
            if self._pubsub is not None and self._connected.is_set():
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(key)
