"""Redis clients that ride out a Redis restart: commands retry with backoff."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from streamworker.settings import RedisSettings

RETRY_ON = (ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError, OSError)


def connect(settings: RedisSettings, *, retries: int = 8) -> Redis:
    """A pooled client for `REDIS_URL` (redis:// or rediss:// with TLS).

    Retries reconnect with exponential backoff (up to ~10 s in total), so a
    Redis restart shows up as a pause, not a crash loop. Callers that loop
    forever (the worker) catch what still escapes and back off themselves.
    """
    return Redis.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=list(RETRY_ON),
        health_check_interval=15,
        socket_connect_timeout=5,
    )
