"""The worker side of the queue: read entries through the consumer group,
reclaim those of dead workers, start a job (a new attempt: the fencing
token), append its tokens, finish or requeue it, and renew its lease.
Each multi-step change is one Lua script (lua/, docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from streamworker.protocol import keys
from streamworker.protocol.appender import Appender
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import Reply
from streamworker.protocol.record import now_ms
from streamworker.protocol.wire import End, LogEntry, Tokens, decode_log, encode

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamworker.protocol.scripts import Scripts
    from streamworker.protocol.settings import QueueSettings


class Entry(msgspec.Struct, frozen=True):
    """A stream entry as a worker reads it."""

    entry_id: str
    job_id: str
    payload: bytes
    # Who queued it, in which tier, and when (the per-key queue-wait metrics).
    owner: str = ""
    tier: str = ""
    enqueued_at_ms: int = 0


class Started(msgspec.Struct, frozen=True):
    """A job this consumer now owns: the attempt (fencing token), the tokens
    earlier attempts logged, and the job's deadline and creation time."""

    attempt: int
    logged: list[LogEntry]
    deadline_ms: int
    created_at_ms: int


class JobConsumer:
    """One worker's view of one model's queue, as consumer `name`."""

    def __init__(
        self, redis: Redis, scripts: Scripts, settings: QueueSettings, *, model: str, name: str
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._settings = settings
        self.model = model
        self.name = name
        self._keys = model_keys(model)
        self._appender: Appender | None = None

    @property
    def lease_seconds(self) -> float:
        return self._settings.job_lease_seconds

    @property
    def lease_ms(self) -> int:
        return int(self._settings.job_lease_seconds * 1000)

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group; a no-op if they exist.
        Start at id 0 so entries added before the group existed are not lost."""
        try:
            await self._redis.xgroup_create(self._keys.stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self._redis.sadd(keys.MODELS, self.model)

    async def read(self, count: int, block_ms: int | None, *, own: bool = False) -> list[Entry]:
        """At most `count` entries: new ones, dispatched from the wait streams
        by the scheduler (waiting up to `block_ms` for one to arrive; 0:
        forever, None: not at all), or with own=True this consumer's pending
        entries from a previous life (XREADGROUP '0')."""
        if own:
            reply = await self._redis.xreadgroup(
                keys.GROUP, self.name, {self._keys.stream: "0"}, count=count
            )
            return [e for _, entries in reply or [] for e in _entries(entries)]
        entries = await self.dispatch(count)
        if entries or block_ms is None:
            return entries
        # Block until an enqueue leaves a token (a list pop wakes one worker per
        # job, and no wakeup is lost between the dispatch above and the wait).
        wake = [self._keys.wake]
        if isinstance(self._redis, RedisCluster):
            if await self._redis.blpop(wake, timeout=block_ms / 1000) is None:
                return []
            return await self.dispatch(count)
        # The dispatch rides behind the pop on the same connection: Redis runs
        # it the moment the pop returns, saving a round trip on every wake.
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.blpop(wake, timeout=block_ms / 1000)
                await self._dispatch(count, pipe, now=0)
                _, flat = await pipe.execute()
        except NoScriptError:
            # Redis restarted while the pop was waiting: the pipeline's retry
            # resends EVALSHA to a server that has not loaded the script. A
            # direct call loads it again.
            return await self.dispatch(count)
        return _dispatched(flat)

    async def dispatch(self, count: int) -> list[Entry]:
        """Move up to `count` waiting jobs into the run stream, chosen by tier,
        aging and fair share (lua/dispatch.lua), delivered to this consumer."""
        return _dispatched(await self._dispatch(count, self._redis, now=now_ms()))

    def _dispatch(self, count: int, client: Any, *, now: int) -> Any:
        """The dispatch script's call on `client` (now=0: Redis's clock)."""
        k = self._keys
        return self._scripts.dispatch(
            keys=[k.stream, k.queued, k.wake],
            args=[
                keys.GROUP,
                self.name,
                count,
                now,
                int(self._settings.scheduler_aging_seconds * 1000),
                self._settings.job_result_ttl_seconds,
            ],
            client=client,
        )

    async def reclaim(self, count: int) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than the lease (their owner is dead),
        looping the cursor, taking no more than `count`."""
        taken: list[Entry] = []
        cursor = "0-0"
        while len(taken) < count:
            cursor_b, entries, *_deleted = await self._redis.xautoclaim(
                self._keys.stream,
                keys.GROUP,
                self.name,
                self.lease_ms,
                cursor,
                count=count - len(taken),
            )
            taken.extend(_entries(entries))
            cursor = cursor_b.decode() if isinstance(cursor_b, bytes) else cursor_b
            if cursor == "0-0":
                break
        return taken

    async def prune_consumers(self, live: set[str], idle_ms: int) -> list[str]:
        """Delete group consumers that are not live workers, have been idle
        longer than `idle_ms` and own no pending entry (checked atomically)."""
        stream = self._keys.stream
        gone = [
            c["name"]
            for c in await self._redis.xinfo_consumers(stream, keys.GROUP)
            if c["name"].decode() not in live and c["idle"] >= idle_ms
        ]
        if not gone:
            return []
        removed = await self._scripts.prune(keys=[stream], args=[keys.GROUP, *gone])
        return [x.decode() for x in removed]

    async def start(self, entry: Entry) -> Started | str:
        """Take ownership of an entry's job. Returns Started, or why it was
        skipped (a terminal status, Reply.GONE or Reply.DEAD)."""
        result = await self._scripts.start(
            keys=self._keys.lifecycle(entry.job_id),
            args=[
                entry.entry_id,
                self.name,
                keys.GROUP,
                now_ms(),
                self._settings.job_max_attempts,
                self._settings.job_result_ttl_seconds,
            ],
        )
        if result[0] != Reply.RUN.encode():
            return result[1].decode()
        logged = int(result[2])
        prefix = (
            decode_log(await self._redis.lrange(self._keys.log(entry.job_id), 0, -1))
            if logged
            else []
        )
        return Started(
            attempt=int(result[1]),
            logged=prefix,
            deadline_ms=int(result[3]),
            created_at_ms=int(result[4]),
        )

    async def append(self, job_id: str, attempt: int, seq: int, tokens: Sequence[LogEntry]) -> str:
        """Log and publish tokens seq.. of this attempt: Reply.OK, CANCEL (the
        client cancelled) or STALE (another attempt owns the job)."""
        k = self._keys
        event = encode(Tokens(seq=seq, attempt=attempt, tokens=list(tokens)))
        keys_ = [k.job(job_id), k.log(job_id), k.channel(job_id)]
        args: list[object] = [attempt, seq, event, *(encode(t) for t in tokens)]
        if self._appender is not None:
            result = await self._appender.call(keys_, args)
        else:
            result = await self._scripts.append(keys=keys_, args=args)
        return result.decode()  # type: ignore[union-attr]

    async def batch_appends(self) -> None:
        """Until cancelled, send the waiting appends of all running jobs in
        one pipeline (a multi-slot worker runs this in its upkeep group);
        without it each append is its own round trip."""
        appender = Appender(self._redis, self._scripts.append)
        self._appender = appender
        try:
            await appender.run()
        finally:
            self._appender = None

    async def finish(
        self, entry: Entry, attempt: int, end: End, fields: dict[str, str | int]
    ) -> bool:
        """End this attempt with end.status; False if the attempt was stale."""
        flat: list[str | int] = [x for kv in fields.items() for x in kv]
        result = await self._scripts.finish(
            keys=self._keys.lifecycle(entry.job_id)[:4],
            args=[
                attempt,
                entry.entry_id,
                keys.GROUP,
                end.status,
                now_ms(),
                self._settings.job_result_ttl_seconds,
                encode(end),
                *flat,
            ],
        )
        return bool(result)

    async def requeue(
        self, entry: Entry, attempt: int, *, error: str | None, delay_ms: int = 0
    ) -> str:
        """Hand a job back: after an error (a failure; dead-letters at max
        attempts) or at shutdown (error=None). Reply.REQUEUED, DEAD or STALE."""
        result = await self._scripts.requeue(
            keys=self._keys.lifecycle(entry.job_id),
            args=[
                attempt,
                entry.entry_id,
                keys.GROUP,
                self.name,
                now_ms(),
                self._settings.job_result_ttl_seconds,
                self._settings.job_max_attempts,
                1 if error is not None else 0,
                error or "",
                self.lease_ms,
                delay_ms,
            ],
        )
        return result.decode()

    async def refresh(self, entry_ids: Sequence[str]) -> set[str]:
        """Renew the lease on entries; returns the ids this consumer lost."""
        if not entry_ids:
            return set()
        lost = await self._scripts.refresh(
            keys=[self._keys.stream], args=[keys.GROUP, self.name, *entry_ids]
        )
        return {x.decode() for x in lost}


def _dispatched(flat: list[bytes]) -> list[Entry]:
    """dispatch.lua's reply: six fields per entry delivered."""
    return [
        Entry(
            entry_id=flat[i].decode(),
            job_id=flat[i + 1].decode(),
            payload=flat[i + 2],
            owner=flat[i + 3].decode(),
            tier=flat[i + 4].decode(),
            enqueued_at_ms=int(flat[i + 5] or 0),
        )
        for i in range(0, len(flat), 6)
        if flat[i + 1]
    ]


def _entries(raw: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        # An entry deleted while pending (trimmed or finished under us) comes
        # back from XAUTOCLAIM without fields: there is nothing to run.
        if not fields:
            continue
        out.append(
            Entry(
                entry_id=entry_id.decode(),
                job_id=fields[b"job_id"].decode(),
                payload=fields[b"payload"],
                owner=fields.get(b"owner", b"").decode(),
                tier=fields.get(b"tier", b"").decode(),
                enqueued_at_ms=int(fields.get(b"enqueued_at", b"0") or 0),
            )
        )
    return out
