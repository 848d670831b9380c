"""Redis clients that ride out a Redis restart or a cluster failover: commands
retry with backoff. One Redis or a Redis Cluster, chosen here and nowhere else.

A cluster is used when REDIS_CLUSTER=true, or when it is unset and the node
REDIS_URL names says `cluster_enabled:1`. Every key one atomic step touches
carries one hash tag (keys.py), so the same scripts and pipelines run on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    RedisError,
    TimeoutError,
    TryAgainError,
)

if TYPE_CHECKING:
    from streamworker.protocol.settings import RedisSettings

log = logging.getLogger("streamworker.redis")

RETRY_ON = (ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError, OSError)
# A failover leaves a slot without a master for about cluster-node-timeout
# plus an election: the cluster client retries these as it does a lost connection.
CLUSTER_RETRY_ON = (*RETRY_ON, ClusterDownError, TryAgainError)
POOL_WAIT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 3.0


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


async def cluster_mode(settings: RedisSettings) -> bool:
    """REDIS_CLUSTER when set, else what the node at REDIS_URL says. A node
    that cannot be reached is taken for a single Redis (with a warning):
    deployments on a cluster set REDIS_CLUSTER=true so a start during an
    outage does not guess."""
    if settings.redis_cluster:
        return settings.redis_cluster == "true"
    probe = Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        info = await probe.info("cluster")
    except (RedisError, OSError) as exc:
        log.warning("could not ask %s whether it is a cluster node (%s)", _safe(settings), exc)
        return False
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


def _safe(settings: RedisSettings) -> str:
    """REDIS_URL without its password, for logs."""
    url = settings.redis_url
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


async def connect(settings: RedisSettings, *, retries: int = 8) -> Redis:
    """A pooled client for `REDIS_URL` (redis:// or rediss:// with TLS, with
    a password in the URL): a `Redis`, or a `RedisCluster` on a cluster.

    Retries reconnect with exponential backoff (up to ~10 s in total), so a
    Redis restart or a failover shows up as a pause, not a crash loop.
    Callers that loop forever (the worker) catch what still escapes and back
    off themselves.
    """
    if await cluster_mode(settings):
        log.info("Redis Cluster, seeded from %s", _safe(settings))
        return connect_cluster(settings, retries=retries)
    return connect_single(settings, retries=retries)


def connect_single(settings: RedisSettings, *, retries: int = 8) -> Redis:
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


class BackoffCluster(RedisCluster):
    """A RedisCluster whose commands ride out a failover. The client retries a
    lost node at once (refreshing its slot map each time), which spends every
    retry inside the second or two before a replica is promoted; this one
    waits with the same exponential backoff as a single Redis's pool
    between rounds (~10 s in all)."""

    sw_retries = 8
    sw_backoff = ExponentialBackoff(cap=2.0, base=0.05)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        failures = 0
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except CLUSTER_RETRY_ON:
                failures += 1
                if failures > self.sw_retries:
                    raise
                await asyncio.sleep(self.sw_backoff.compute(failures))


def connect_cluster(settings: RedisSettings, *, retries: int = 8) -> Redis:
    """A `RedisCluster` seeded from REDIS_URL's node (it learns the others
    from CLUSTER SLOTS). After a connection error or CLUSTERDOWN it refreshes
    the slot map and retries with the same backoff as a single Redis; -MOVED
    (a slot moved, a replica promoted) patches the map and resends at once.
    REDIS_MAX_CONNECTIONS is per node here."""
    client = BackoffCluster.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        retry=Retry(
            ExponentialBackoff(cap=2.0, base=0.05),
            retries,
            supported_errors=CLUSTER_RETRY_ON,
        ),
        retry_on_error=list(CLUSTER_RETRY_ON),
        health_check_interval=15,
        socket_connect_timeout=5,
        # A failover changes owners: look the whole map up again on the
        # first -MOVED rather than patching one slot at a time.
        reinitialize_steps=1,
    )
    client.sw_retries = retries
    return client  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def key_owner(redis: Redis, key: str) -> AsyncIterator[Redis]:
    """A plain client on the master that owns `key`, for WATCH/MULTI (the
    client itself on one Redis). redis-py's cluster client runs a watched
    transaction's commands in a thread on a second event loop, which breaks
    once a failover makes it refresh its slot map; one key's transaction
    needs only that key's master anyway."""
    if not is_cluster(redis):
        yield redis
        return
    await redis.initialize()  # type: ignore[attr-defined]  # at once when done before
    node = redis.get_node_from_key(key)  # type: ignore[attr-defined]
    pool = ConnectionPool(
        connection_class=node.connection_class, max_connections=1, **node.connection_kwargs
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    try:
        yield client
    finally:
        await client.aclose()


def pubsub_client(
    settings: RedisSettings, host: str | None = None, port: int | None = None
) -> Redis:
    """A client for one pub/sub connection: to REDIS_URL's server, or to the
    cluster node at host:port with REDIS_URL's credentials and TLS. It never
    reconnects behind the caller's back: the gateway's hub must see every
    drop, because a resubscription also means reading what was missed."""
    url = settings.redis_url
    if host is not None and port is not None:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"{host}:{port}"
        url = urlunsplit((parts.scheme, netloc, "/0", parts.query, parts.fragment))
    return Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2,
        socket_keepalive=True,
    )


async def confirm(redis: Redis, keys: Sequence[str], replicas: int, timeout_ms: int) -> int:
    """Wait until `replicas` replicas of each master owning one of `keys`
    have every write that master acknowledged so far (or `timeout_ms` ran
    out); returns the smallest count any of them reached.

    WAIT counts the writes of the connection it runs on, and a pool hands
    out any connection: so a small write to an ack key on the same master
    goes first on the same connection, and WAIT covers it and, since a
    master's replication stream is one ordered log, every write before it,
    the caller's included."""
    if not is_cluster(redis):
        return await _wait_on(redis, None, ACK_KEY, replicas, timeout_ms)
    await redis.initialize()  # type: ignore[attr-defined]  # at once when done before
    nodes = {redis.get_node_from_key(k).name: redis.get_node_from_key(k) for k in keys}  # type: ignore[attr-defined]
    counts = await asyncio.gather(
        *(
            _wait_on(redis, node, _ack_key(redis, node), replicas, timeout_ms)
            for node in nodes.values()
        )
    )
    return min(counts, default=replicas)


ACK_KEY = "sw:ack"
_ack_keys: dict[str, str] = {}


def _ack_key(redis: Any, node: Any) -> str:
    """A key the master `node` owns (sw:{ack-N}:ack), found once per master."""
    cached = _ack_keys.get(node.name)
    if cached is not None and redis.get_node_from_key(cached).name == node.name:
        return cached
    for n in range(100_000):
        key = f"sw:{{ack-{n}}}:ack"
        if redis.get_node_from_key(key).name == node.name:
            _ack_keys[node.name] = key
            return key
    raise RedisError(f"no slot of {node.name} found for an ack key")


async def _wait_on(redis: Any, node: Any, ack: str, replicas: int, timeout_ms: int) -> int:
    commands: list[tuple[Any, ...]] = [
        ("SET", ack, "1", "PX", "60000"),
        ("WAIT", replicas, timeout_ms),
    ]
    if node is None:
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            _, acked = await pipe.execute()
        return int(acked)
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        await conn.read_response()
        acked = await conn.read_response()
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        node.release(conn)
    return int(acked)
