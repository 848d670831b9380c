"""The pub/sub connections of one gateway process, shared by every request.

Job channels are shard channels (SSUBSCRIBE; the scripts SPUBLISH): on a
Redis Cluster an event goes only to the master owning the job's slot, not to
every node. The hub keeps one connection per master (one in all on a single
Redis), and each request subscribes its job's channel on the owner's
connection and gets a queue of messages. SSUBSCRIBE waits for Redis's
confirmation, so a request that subscribes before it enqueues cannot miss its
job's first event.

If a connection drops (a Redis restart, a master killed), a slot moves (Redis
then drops that channel's subscribers, or answers -MOVED), the hub rebuilds:
it reads the slot map again, reconnects with backoff, resubscribes every
channel on its current owner, and puts RESYNC on every queue: pub/sub is
at-most-once, so each relay then reads what it missed from the job's durable
log. While it rebuilds, `connected` is false and /ready says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import RedisError

from streamworker.protocol.connections import is_cluster, pubsub_client
from streamworker.protocol.settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("gateway.hub")

RESYNC: Final = b"\x00resync"
SUBSCRIBE_CONFIRM_SECONDS = 5.0
# A home channel must land on a given master: tags 0, 1, 2... are tried, and
# with 16384 slots spread over the masters one of the first few fits.
HOME_TAG_TRIES = 100_000


class SlotMoved(RedisError):
    """Redis dropped a channel we still listen to: its slot moved."""


class Shard:
    """One master's pub/sub connection and the channels it carries."""

    def __init__(self, name: str, client: Redis, home: bytes) -> None:
        self.name = name
        self.client = client
        self.pubsub: PubSub = client.pubsub()
        # A channel of our own keeps the connection subscribed while idle.
        self.home = home
        # Channels we unsubscribed ourselves (their SUNSUBSCRIBE is expected).
        self.leaving: set[bytes] = set()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


class Hub:
    def __init__(self, redis: Redis, settings: RedisSettings | None = None) -> None:
        self.redis = redis
        self.settings = settings or RedisSettings()
        self.cluster = is_cluster(redis)
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._shards: dict[str, Shard] = {}
        self._connected = asyncio.Event()
        # Set when a request finds the slot map changed under it.
        self._stale = asyncio.Event()
        self._token = f"sw:gateway:{os.getpid()}:{id(self)}"
        self.rebuilds = 0

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
        """Read messages forever, rebuilding with backoff."""
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
                shards, self._shards = list(self._shards.values()), {}
                for shard in shards:
                    await shard.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _owner(self, channel: bytes) -> str:
        """The name of the master owning `channel`'s slot, in the client's map."""
        if not self.cluster:
            return ""
        return self.redis.get_node_from_key(channel).name  # type: ignore[attr-defined]

    def _home(self, name: str) -> bytes:
        if not self.cluster:
            return self._token.encode()
        for n in range(HOME_TAG_TRIES):
            home = f"{self._token}:{{{n}}}".encode()
            if self._owner(home) == name:
                return home
        raise RedisError(f"no slot of {name} found for the hub's home channel")

    async def _connect(self) -> None:
        self._stale.clear()
        if self.cluster:
            # Owners change with a failover: ask the cluster, not the cache
            # (the client's first initialize also learns the command table).
            await self.redis.initialize()  # type: ignore[attr-defined]
            await self.redis.nodes_manager.initialize()  # type: ignore[attr-defined]
            nodes: list[Any] = self.redis.get_primaries()  # type: ignore[attr-defined]
            for node in nodes:
                client = pubsub_client(self.settings, node.host, int(node.port))
                self._shards[node.name] = Shard(node.name, client, self._home(node.name))
        else:
            self._shards[""] = Shard("", pubsub_client(self.settings), self._home(""))
        # On a cluster one SSUBSCRIBE takes channels of one slot only.
        groups: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for channel in self._queues:
            slot = self.redis.keyslot(channel) if self.cluster else 0  # type: ignore[attr-defined]
            groups[(self._owner(channel), slot)].append(channel)
        for shard in self._shards.values():
            await shard.pubsub.ssubscribe(shard.home)
        for (name, _), channels in groups.items():
            await self._shards[name].pubsub.ssubscribe(*channels)
        self.rebuilds += 1
        if self.rebuilds > 1:
            log.info("pub/sub back on %d connection(s)", len(self._shards))
        self._connected.set()
        for queue in self._queues.values():
            queue.put_nowait(RESYNC)

    async def _read(self) -> None:
        """Until one shard fails or the slot map is stale: then raise."""
        tasks = [asyncio.create_task(self._read_shard(s)) for s in self._shards.values()]
        tasks.append(asyncio.create_task(self._stale.wait()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise SlotMoved("the slot map changed")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_shard(self, shard: Shard) -> None:
        while True:
            msg = await shard.pubsub.get_message(timeout=None)
            if msg is None:
                continue
            channel, kind = msg["channel"], msg["type"]
            if kind == "smessage":
                if (queue := self._queues.get(channel)) is not None:
                    queue.put_nowait(msg["data"])
            elif kind == "ssubscribe":
                fut = self._confirm.pop(channel, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind == "sunsubscribe":
                if channel in shard.leaving:
                    shard.leaving.discard(channel)
                elif channel in self._queues or channel == shard.home:
                    # Redis drops a shard channel's subscribers when its
                    # slot leaves the node (a resharding, a demoted master).
                    raise SlotMoved(f"{channel!r} left {shard.name or 'the server'}")

    async def confirmed(self, channel: str) -> None:
        """Until Redis confirmed the subscription of `channel` (at once if it
        has). A rebuild in between resubscribes everything and RESYNCs, so a
        lost confirmation only costs the wait."""
        fut = self._confirm.get(channel.encode())
        if fut is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout=SUBSCRIBE_CONFIRM_SECONDS)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, channel: str, *, confirm: bool = True
    ) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Subscribe `channel` for the block; returns once Redis confirmed, or
        with confirm=False as soon as the request is sent (`confirmed` then
        waits for it: the caller's own round trip can run meanwhile)."""
        key = channel.encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[key] = queue
        shard: Shard | None = None
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=10)
            fut = asyncio.get_running_loop().create_future()
            self._confirm[key] = fut
            shard = self._shards.get(self._owner(key))
            if shard is None:
                # A master the hub has no connection to: the map changed. The
                # rebuild subscribes this channel too and RESYNCs its queue.
                self._stale.set()
            else:
                await shard.pubsub.ssubscribe(key)
                if confirm:
                    await self.confirmed(channel)
            yield queue
        finally:
            self._queues.pop(key, None)
            self._confirm.pop(key, None)
            if shard is not None and self._shards.get(shard.name) is shard and self.connected:
                shard.leaving.add(key)
                with contextlib.suppress(RedisError, OSError):
                    await shard.pubsub.sunsubscribe(key)
