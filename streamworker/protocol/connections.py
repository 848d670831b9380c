"""Redis clients that ride out a Redis restart: commands retry with backoff."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from streamworker.protocol.settings import RedisSettings

RETRY_ON = (ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError, OSError)
POOL_WAIT_SECONDS = 10.0


def connect(settings: RedisSettings, *, retries: int = 8) -> Redis:
    """A pooled client for `REDIS_URL` (redis:// or rediss:// with TLS).

    Retries reconnect with exponential backoff (up to ~10 s in total), so a
    Redis restart shows up as a pause, not a crash loop. Callers that loop
    forever (the worker) catch what still escapes and back off themselves.
    """
    # A blocking pool: with more requests in flight than REDIS_MAX_CONNECTIONS
    # (the relay benchmark's 1000 SSE clients), a command waits for a free
    # connection instead of failing with MaxConnectionsError (a 500); after
    # POOL_WAIT_SECONDS it fails as a ConnectionError, which callers already
    # treat as "Redis unavailable" (503 + Retry-After at the gateway).
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=POOL_WAIT_SECONDS,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=list(RETRY_ON),
        health_check_interval=15,
        socket_connect_timeout=5,
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # closing the client closes its pool
    return client
