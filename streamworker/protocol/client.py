"""The client side of the queue (the gateway, the CLI): enqueue a job, cancel
it, read its record and its token log, list and replay dead letters.
Each multi-step change is one Lua script (lua/, docs/architecture.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from streamworker.protocol import keys
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import JobStatus, Reply, Tier
from streamworker.protocol.record import JobRecord, now_ms
from streamworker.protocol.wire import JobRequest, LogEntry, decode_log

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamworker.protocol.scripts import Scripts
    from streamworker.protocol.settings import QueueSettings

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
# The queue position counts entries up to this many (bounded work in Redis).
POSITION_LIMIT = 100_000


class QueueAtLimit(Exception):
    """The model's queue holds its bound of queued jobs."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs are queued")
        self.depth = depth


class JobClient:
    def __init__(self, redis: Redis, scripts: Scripts, settings: QueueSettings) -> None:
        self._redis = redis
        self._scripts = scripts
        self._settings = settings

    async def enqueue(
        self,
        model: str,
        job_id: str,
        request: JobRequest,
        *,
        owner: str = "",
        timeout_seconds: float | None = None,
        max_queue: int = 0,
        idempotency_key: str | None = None,
        tier: str = "default",
        weight: float = 1.0,
    ) -> tuple[str, bool]:
        """Add a job unless the queue is at its bound (QueueAtLimit). Returns (job id,
        created): a retried Idempotency-Key of the same owner returns the
        first job's id and False. `tier` ("priority", "default", "flex") and
        the owner's fair-share `weight` decide when it is dispatched."""
        tier = Tier(tier).value  # ValueError for a tier that does not exist
        if weight <= 0:
            raise ValueError("weight must be positive")
        k = model_keys(model)
        now = now_ms()
        timeout = timeout_seconds or self._settings.job_timeout_seconds
        deadline = now + int(timeout * 1000)
        # The id -> model index is written first: if the enqueue then fails, it
        # points at nothing (a 404), never a job without an index.
        ttl = int(timeout) + self._settings.job_result_ttl_seconds + 60
        await self._redis.set(keys.job_model(job_id), model, ex=ttl)
        result = await self._scripts.enqueue(
            keys=[k.stream, k.job(job_id), k.queued, k.idempotency(owner, idempotency_key or "-")],
            args=[
                job_id,
                model,
                msgspec.json.encode(request),
                now,
                deadline,
                max_queue,
                IDEMPOTENCY_TTL_SECONDS,
                1 if idempotency_key else 0,
                owner,
                request.kind.value,
                tier,
                repr(float(weight)),
            ],
        )
        outcome = result[0].decode()
        if outcome == Reply.FULL:
            await self._redis.delete(keys.job_model(job_id))
            raise QueueAtLimit(int(result[1]))
        if outcome == Reply.DUPLICATE:
            await self._redis.delete(keys.job_model(job_id))
            return result[1].decode(), False
        return job_id, True

    async def model_of(self, job_id: str) -> str | None:
        model = await self._redis.get(keys.job_model(job_id))
        return model.decode() if model is not None else None

    async def record(self, model: str, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(model_keys(model).job(job_id))
        return JobRecord.from_hash(job_id, raw) if raw else None

    async def log(self, model: str, job_id: str, start: int = 0) -> list[LogEntry]:
        return decode_log(await self._redis.lrange(model_keys(model).log(job_id), start, -1))

    async def cancel(self, model: str, job_id: str, reason: JobStatus = JobStatus.CANCELLED) -> str:
        """Cancel (reason CANCELLED) or expire (EXPIRED) a job. Returns what
        happened: the terminal status for a queued job, Reply.CANCELLING for a
        running one, or Reply.MISSING."""
        k = model_keys(model)
        result = await self._scripts.cancel(
            keys=[k.job(job_id), k.log(job_id), k.channel(job_id), k.queued],
            args=[now_ms(), self._settings.job_result_ttl_seconds, reason.value],
        )
        return result.decode()

    async def position(self, model: str, job_id: str) -> int | None:
        """The job's place in the queue (1: next to start), or None once it
        is no longer queued. O(position) inside Redis, bounded."""
        k = model_keys(model)
        n = int(
            await self._scripts.queue_position(
                keys=[k.stream, k.job(job_id)], args=[keys.GROUP, POSITION_LIMIT]
            )
        )
        return None if n < 0 else n

    async def queued_depths(self) -> dict[str, int]:
        """model -> jobs queued, for every model that ever had a stream."""
        models = sorted(m.decode() for m in await self._redis.smembers(keys.MODELS))
        if not models:
            return {}
        # One GET per model in one pipeline, not MGET: each model's counter
        # lives in its own slot, and on Redis Cluster MGET takes one slot.
        async with self._redis.pipeline(transaction=False) as pipe:
            for m in models:
                pipe.get(model_keys(m).queued)
            depths = await pipe.execute()
        return {m: int(d or 0) for m, d in zip(models, depths, strict=True)}

    async def waiting(self, model: str) -> dict[tuple[str, str], int]:
        """(tier, owner) -> jobs waiting to be dispatched, for every owner
        with a backlog (the metrics' per-key queue depth)."""
        k = model_keys(model)
        out: dict[tuple[str, str], int] = {}
        for tier in Tier:
            owners = [o.decode() for o in await self._redis.lrange(k.ring(tier), 0, -1)]
            if not owners:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.xlen(k.wait(tier, owner))
                lengths = await pipe.execute()
            for owner, n in zip(owners, lengths, strict=True):
                out[(tier.value, owner)] = int(n)
        return out

    async def dead(self, model: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        rows = await self._redis.xrange(model_keys(model).dead, count=count)
        return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in rows]

    async def replay(self, model: str, dead_id: str) -> str | None:
        """Re-enqueue a dead-lettered job under its own id; None if missing."""
        k = model_keys(model)
        rows = await self._redis.xrange(k.dead, dead_id, dead_id)
        if not rows:
            return None
        job_id = rows[0][1][b"job_id"].decode()
        now = now_ms()
        deadline = now + int(self._settings.job_timeout_seconds * 1000)
        await self._redis.set(
            keys.job_model(job_id),
            model,
            ex=int(self._settings.job_timeout_seconds) + self._settings.job_result_ttl_seconds,
        )
        result = await self._scripts.replay(
            keys=[k.dead, k.stream, k.job(job_id), k.queued], args=[dead_id, now, deadline, 1]
        )
        return None if result == Reply.MISSING.encode() else result.decode()
