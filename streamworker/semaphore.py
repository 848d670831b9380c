"""The GPU semaphore: job slots shared by every worker process on one GPU.

Several worker processes may share a card (two models, or a restart that
overlaps). Each process sizes its own slots, but only this semaphore keeps
them from running more jobs together than the card holds. It lives in Redis
under `keys.semaphore(gpu_uuid)` (a per-host key on CPU hosts): a sorted set
of holder tokens scored by lease expiry. A worker takes a token before it
reads a stream entry, holds it while the job runs, renews it every lease/3,
and gives it back when the job ends. A killed process renews nothing, so its
tokens expire and the slots return by themselves within one lease.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError

from streamworker.protocol import keys
from streamworker.protocol.scripts import Scripts

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("streamworker.semaphore")


@dataclass(eq=False)
class Grant:
    """Tokens taken for one read: each is assigned to an entry that will run,
    or handed back when the read brings fewer entries than tokens."""

    tokens: list[str]
    assigned: dict[str, str] = field(default_factory=dict)  # entry id -> token

    def __len__(self) -> int:
        return len(self.tokens)

    def assign(self, entry_id: str) -> None:
        self.assigned[entry_id] = self.tokens[len(self.assigned)]


class GpuSemaphore:
    def __init__(
        self,
        redis: Redis,
        gpu: str,
        limit: int,
        *,
        owner: str,
        lease_seconds: float = 15.0,
        poll_seconds: float = 0.2,
    ) -> None:
        self.redis = redis
        self.key = keys.semaphore(gpu)
        self.limit = limit
        self.owner = owner
        self.lease_ms = int(lease_seconds * 1000)
        self.poll_seconds = poll_seconds
        self.by_entry: dict[str, str] = {}  # running entry id -> its token
        self._fresh = True  # tokens of a previous life not yet cleared
        scripts = Scripts(redis)
        self._acquire = scripts.semaphore_acquire
        self._renew = scripts.semaphore_renew

    def _token(self) -> str:
        # The owner name makes `ZRANGE` readable and lets a restarted worker
        # find its previous life's tokens; the random part tells tokens apart.
        return f"{self.owner}:{uuid.uuid4().hex[:12]}"

    @contextlib.asynccontextmanager
    async def grant(self, n: int) -> AsyncIterator[Grant]:
        """Take up to n free slots (maybe none) for the duration of a read.
        Tokens assigned to entries stay held; the rest go back on exit."""
        if self._fresh:
            await self._forget_previous_life()
        tokens = [self._token() for _ in range(n)] if n > 0 else []
        granted: list[bytes] = (
            await self._acquire(keys=[self.key], args=[self.limit, self.lease_ms, *tokens])
            if tokens
            else []
        )
        grant = Grant([t.decode() for t in granted])
        try:
            yield grant
        finally:
            self.by_entry.update(grant.assigned)
            unused = [t for t in grant.tokens if t not in grant.assigned.values()]
            if unused:
                await self._zrem(unused)

    async def _forget_previous_life(self) -> None:
        """Worker names are stable and unique (host + instance), so tokens
        under our name belong to this worker's previous process (killed, then
        restarted by systemd): free them now rather than after their lease,
        as the worker takes back its own pending entries at once too."""
        mine = [
            m
            for m in await self.redis.zrange(self.key, 0, -1)
            if m.decode().rsplit(":", 1)[0] == self.owner
        ]
        if mine:
            await self.redis.zrem(self.key, *mine)
            log.info("freed %d GPU slot(s) held by this worker's previous process", len(mine))
        self._fresh = False

    async def release(self, entry_id: str) -> None:
        """The job of this entry ended: its slot is free for any process."""
        token = self.by_entry.pop(entry_id, None)
        if token is not None:
            await self._zrem([token])

    async def _zrem(self, tokens: list[str]) -> None:
        # Shielded: a job ending at shutdown must still give its slot back. If
        # Redis is away, the lease frees the slot instead (we stop renewing).
        with anyio.CancelScope(shield=True):
            try:
                await self.redis.zrem(self.key, *tokens)
            except (RedisError, OSError) as exc:
                log.warning(
                    "could not release %d GPU slot(s) (%s); the lease frees them", len(tokens), exc
                )

    async def renew(self) -> int:
        """Extend the leases of every slot held; returns how many had lapsed."""
        held = list(self.by_entry.values())
        if not held:
            return 0
        return int(await self._renew(keys=[self.key], args=[self.lease_ms, *held]))

    async def renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease_ms / 3000)
            try:
                lapsed = await self.renew()
            except (RedisError, OSError) as exc:
                log.warning("GPU semaphore renewal failed (%s)", exc)
                continue
            if lapsed:
                log.warning("%d GPU slot lease(s) had lapsed; counted again", lapsed)


async def holders(redis: Redis, gpu: str) -> list[tuple[str, int]]:
    """Live holders of a GPU's semaphore and their lease expiry (ms)."""
    t = await redis.time()
    now = t[0] * 1000 + t[1] // 1000
    rows = await redis.zrangebyscore(keys.semaphore(gpu), now, "+inf", withscores=True)
    return [(m.decode(), int(s)) for m, s in rows]
