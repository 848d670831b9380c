"""Riding out a Redis outage in the worker's own loops."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("streamworker.retry")

T = TypeVar("T")


async def with_backoff(call: Callable[[], Awaitable[T]]) -> T:
    """Retry a Redis step through an outage (the client retries too, but a
    restart can outlast its budget). The fenced scripts make retries safe."""
    delay = 0.1
    while True:
        try:
            return await call()
        except ResponseError as exc:
            # NOGROUP: Redis came back empty and the group is being recreated;
            # LOADING: Redis is reading its data back from disk.
            if "NOGROUP" in str(exc) or "LOADING" in str(exc):
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)
