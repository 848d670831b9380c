"""The queue protocol: enqueue, read, start, log tokens, finish, requeue,
lease refresh and reclaim. Both the gateway and the workers use it; each
multi-step change is one Lua script (see lua/ and docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import ResponseError

from streamworker import keys
from streamworker.appender import Appender
from streamworker.events import LogEntry, Tokens, decode_log, encode
from streamworker.jobs import JobRecord, JobRequest, now_ms
from streamworker.scripts import Scripts
from streamworker.settings import QueueSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs are queued")
        self.depth = depth


class Entry(msgspec.Struct, frozen=True):
    """A stream entry as a worker reads it."""

    entry_id: str
    job_id: str
    payload: bytes


class Started(msgspec.Struct, frozen=True):
    attempt: int
    logged: list[LogEntry]
    deadline_ms: int
    created_at_ms: int


@lru_cache(maxsize=1024)
def model_keys(model: str) -> keys.ModelKeys:
    return keys.ModelKeys(model)


_request_decoder = msgspec.json.Decoder(JobRequest)


def decode_request(payload: bytes) -> JobRequest:
    return _request_decoder.decode(payload)


class Queue:
    def __init__(self, redis: Redis, settings: QueueSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts(redis)
        # Set by a worker that runs many jobs: appends go out in pipelines.
        self.appender: Appender | None = None

    @property
    def lease_ms(self) -> int:
        return int(self.settings.job_lease_seconds * 1000)

    # -- set-up -------------------------------------------------------------

    async def ensure_group(self, model: str) -> None:
        """Create the stream and its consumer group; a no-op if they exist.
        Start at id 0 so entries added before the group existed are not lost."""
        k = model_keys(model)
        try:
            await self.redis.xgroup_create(k.stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.redis.sadd(keys.MODELS, model)

    # -- gateway side -------------------------------------------------------

    async def enqueue(
        self,
        model: str,
        job_id: str,
        request: JobRequest,
        *,
        timeout_seconds: float | None = None,
        max_queue: int = 0,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """Add a job unless the queue is full. Returns (job id, created); a
        retried Idempotency-Key returns the first job's id and False."""
        k = model_keys(model)
        now = now_ms()
        timeout = timeout_seconds or self.settings.job_timeout_seconds
        deadline = now + int(timeout * 1000)
        # The id -> model index is written first: if the enqueue then fails, it
        # points at nothing (a 404), never a job without an index.
        ttl = int(timeout) + self.settings.job_result_ttl_seconds + 60
        await self.redis.set(keys.job_model(job_id), model, ex=ttl)
        result = await self.scripts.enqueue(
            keys=[k.stream, k.job(job_id), k.queued, k.idempotency(idempotency_key or "-")],
            args=[
                job_id,
                model,
                msgspec.json.encode(request),
                now,
                deadline,
                max_queue,
                IDEMPOTENCY_TTL_SECONDS,
                1 if idempotency_key else 0,
            ],
        )
        outcome = result[0].decode()
        if outcome == "full":
            await self.redis.delete(keys.job_model(job_id))
            raise QueueFull(int(result[1]))
        if outcome == "duplicate":
            await self.redis.delete(keys.job_model(job_id))
            return result[1].decode(), False
        return job_id, True

    async def model_of(self, job_id: str) -> str | None:
        model = await self.redis.get(keys.job_model(job_id))
        return model.decode() if model is not None else None

    async def record(self, model: str, job_id: str) -> JobRecord | None:
        raw = await self.redis.hgetall(model_keys(model).job(job_id))
        return JobRecord.from_hash(job_id, raw) if raw else None

    async def log(self, model: str, job_id: str, start: int = 0) -> list[LogEntry]:
        return decode_log(await self.redis.lrange(model_keys(model).log(job_id), start, -1))

    async def cancel(self, model: str, job_id: str, reason: str = "cancelled") -> str:
        """Cancel (or expire) a job. Returns what happened: the terminal status
        for a queued job, 'cancelling' for a running one, or 'missing'."""
        k = model_keys(model)
        result = await self.scripts.cancel(
            keys=[k.job(job_id), k.log(job_id), k.channel(job_id), k.queued],
            args=[now_ms(), self.settings.job_result_ttl_seconds, reason],
        )
        return result.decode()

    async def dead(self, model: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        rows = await self.redis.xrange(model_keys(model).dead, count=count)
        return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in rows]

    async def replay(self, model: str, dead_id: str) -> str | None:
        """Re-enqueue a dead-lettered job under its own id; None if missing."""
        k = model_keys(model)
        rows = await self.redis.xrange(k.dead, dead_id, dead_id)
        if not rows:
            return None
        job_id = rows[0][1][b"job_id"].decode()
        now = now_ms()
        deadline = now + int(self.settings.job_timeout_seconds * 1000)
        await self.redis.set(
            keys.job_model(job_id),
            model,
            ex=int(self.settings.job_timeout_seconds) + self.settings.job_result_ttl_seconds,
        )
        result = await self.scripts.replay(
            keys=[k.dead, k.stream, k.job(job_id), k.queued], args=[dead_id, now, deadline]
        )
        return None if result == b"missing" else result.decode()

    async def queued_depth(self, model: str) -> int:
        return int(await self.redis.get(model_keys(model).queued) or 0)

    # -- worker side --------------------------------------------------------

    async def read(
        self, model: str, consumer: str, count: int, block_ms: int | None, own: bool = False
    ) -> list[Entry]:
        """XREADGROUP at most `count` entries: new ones ('>'), or with own=True
        this consumer's pending entries from a previous life ('0')."""
        k = model_keys(model)
        reply = await self.redis.xreadgroup(
            keys.GROUP, consumer, {k.stream: "0" if own else ">"}, count=count, block=block_ms
        )
        return [e for _, entries in reply or [] for e in _entries(entries)]

    async def reclaim(self, model: str, consumer: str, count: int) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than the lease (their owner is dead),
        looping the cursor, taking no more than `count`."""
        k = model_keys(model)
        taken: list[Entry] = []
        cursor = "0-0"
        while len(taken) < count:
            cursor_b, entries, *_deleted = await self.redis.xautoclaim(
                k.stream, keys.GROUP, consumer, self.lease_ms, cursor, count=count - len(taken)
            )
            taken.extend(_entries(entries))
            cursor = cursor_b.decode() if isinstance(cursor_b, bytes) else cursor_b
            if cursor == "0-0":
                break
        return taken

    async def prune_consumers(self, model: str, live: set[str], idle_ms: int) -> list[str]:
        """Delete group consumers that are not live workers, have been idle
        longer than `idle_ms` and own no pending entry (checked atomically)."""
        k = model_keys(model)
        gone = [
            c["name"]
            for c in await self.redis.xinfo_consumers(k.stream, keys.GROUP)
            if c["name"].decode() not in live and c["idle"] >= idle_ms
        ]
        if not gone:
            return []
        removed = await self.scripts.prune(keys=[k.stream], args=[keys.GROUP, *gone])
        return [x.decode() for x in removed]

    async def start(self, model: str, entry: Entry, consumer: str) -> Started | str:
        """Take ownership of an entry's job. Returns Started (the attempt, and
        the tokens already delivered by earlier attempts) or why it was skipped."""
        k = model_keys(model)
        result = await self.scripts.start(
            keys=k.lifecycle(entry.job_id),
            args=[
                entry.entry_id,
                consumer,
                keys.GROUP,
                now_ms(),
                self.settings.job_max_attempts,
                self.settings.job_result_ttl_seconds,
            ],
        )
        if result[0] != b"run":
            return result[1].decode()
        logged = int(result[2])
        prefix = await self.log(model, entry.job_id) if logged else []
        return Started(
            attempt=int(result[1]),
            logged=prefix,
            deadline_ms=int(result[3]),
            created_at_ms=int(result[4]),
        )

    async def append(
        self, model: str, job_id: str, attempt: int, seq: int, tokens: Sequence[LogEntry]
    ) -> str:
        """Log and publish tokens seq.. of this attempt. 'ok', 'cancel' (the
        client cancelled), or 'stale' (another attempt owns the job)."""
        k = model_keys(model)
        event = encode(Tokens(seq=seq, attempt=attempt, tokens=list(tokens)))
        keys_ = [k.job(job_id), k.log(job_id), k.channel(job_id)]
        args = [attempt, seq, event, *(encode(t) for t in tokens)]
        if self.appender is not None:
            result = await self.appender.call(keys_, args)
        else:
            result = await self.scripts.append(keys=keys_, args=args)
        return result.decode()  # type: ignore[union-attr]

    async def finish(
        self,
        model: str,
        entry: Entry,
        attempt: int,
        status: str,
        event: bytes,
        fields: dict[str, str | int],
    ) -> bool:
        """End this attempt with a terminal status; False if it was stale."""
        k = model_keys(model)
        flat: list[str | int] = [x for kv in fields.items() for x in kv]
        result = await self.scripts.finish(
            keys=k.lifecycle(entry.job_id)[:4],
            args=[
                attempt,
                entry.entry_id,
                keys.GROUP,
                status,
                now_ms(),
                self.settings.job_result_ttl_seconds,
                event,
                *flat,
            ],
        )
        return bool(result)

    async def requeue(
        self,
        model: str,
        entry: Entry,
        attempt: int,
        consumer: str,
        *,
        error: str | None,
        delay_ms: int = 0,
    ) -> str:
        """Hand a job back: after an error (a failure; dead-letters at max
        attempts) or at shutdown (error=None). 'requeued', 'dead' or 'stale'."""
        k = model_keys(model)
        result = await self.scripts.requeue(
            keys=k.lifecycle(entry.job_id),
            args=[
                attempt,
                entry.entry_id,
                keys.GROUP,
                consumer,
                now_ms(),
                self.settings.job_result_ttl_seconds,
                self.settings.job_max_attempts,
                1 if error is not None else 0,
                error or "",
                self.lease_ms,
                delay_ms,
            ],
        )
        return result.decode()

    async def refresh(self, model: str, consumer: str, entry_ids: Sequence[str]) -> set[str]:
        """Renew the lease on entries; returns the ids this consumer lost."""
        if not entry_ids:
            return set()
        lost = await self.scripts.refresh(
            keys=[model_keys(model).stream], args=[keys.GROUP, consumer, *entry_ids]
        )
        return {x.decode() for x in lost}


def _entries(raw: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        if not fields:  # deleted under us (pitfall 4): XAUTOCLAIM dropped it already
            continue
        out.append(
            Entry(
                entry_id=entry_id.decode(),
                job_id=fields[b"job_id"].decode(),
                payload=fields[b"payload"],
            )
        )
    return out
