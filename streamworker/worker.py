"""The worker loop: free slots -> read -> start -> generate -> log+publish -> finish.

One worker process serves one model with `slots` concurrent jobs. It reads no
more stream entries than it has free slots (an entry's idle clock starts at
delivery), renews the lease on the entries it runs, reclaims entries whose
owner died, and on shutdown drains, then hands unfinished jobs back.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError, ResponseError

from streamworker import logs
from streamworker.appender import Appender
from streamworker.engines.base import Done, Engine, EngineError, Piece
from streamworker.events import End, LogEntry, encode
from streamworker.jobs import JobStatus, now_ms
from streamworker.queue import Entry, Queue, Started, decode_request
from streamworker.registry import live_workers
from streamworker.semaphore import Grant

if TYPE_CHECKING:
    from streamworker.metrics import WorkerMetrics
    from streamworker.registry import Registry
    from streamworker.semaphore import GpuSemaphore

log = logging.getLogger("streamworker.worker")


@dataclass(eq=False)
class Active:
    """A job this worker runs now."""

    entry: Entry
    attempt: int
    deadline_ms: int
    cancel: threading.Event = field(default_factory=threading.Event)
    # Why we stopped early: 'cancel' (client), 'stale' (lease lost),
    # 'handback' (shutdown), 'expired' (deadline).
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()


class Worker:
    def __init__(
        self,
        queue: Queue,
        engine: Engine,
        *,
        model: str,
        consumer: str,
        slots: int,
        block_ms: int = 1000,
        shutdown_grace: float = 25.0,
        metrics: WorkerMetrics | None = None,
        registry: Registry | None = None,
        semaphore: GpuSemaphore | None = None,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.model = model
        self.consumer = consumer
        self.slots = slots
        self.block_ms = block_ms
        self.shutdown_grace = shutdown_grace
        self.metrics = metrics
        self.registry = registry
        self.semaphore = semaphore
        self.active: dict[str, Active] = {}
        self._slot_freed = anyio.Event()
        self._stopping = False
        # When to look for entries of dead workers (or our own retries) next.
        self._next_reclaim = 0.0
        self.jobs_done = 0

    @property
    def free(self) -> int:
        return self.slots - len(self.active)

    def _grant(self, n: int) -> contextlib.AbstractAsyncContextManager[Grant]:
        if self.semaphore is None:
            return contextlib.nullcontext(Grant([""] * n))
        return self.semaphore.grant(n)

    # -- the loops ------------------------------------------------------------

    async def run(self, *, stop: anyio.Event | None = None, burst: bool = False) -> None:
        """Serve until `stop` is set (then drain and hand back). With
        burst=True, return once the queue is empty and no job runs (tests)."""
        stop = stop or anyio.Event()
        await self._with_backoff(lambda: self.queue.ensure_group(self.model))
        async with anyio.create_task_group() as jobs:
            async with anyio.create_task_group() as upkeep:
                upkeep.start_soon(self._lease_loop)
                if self.slots > 1:
                    self.queue.appender = Appender(self.queue.redis, self.queue.scripts.append)
                    upkeep.start_soon(self.queue.appender.run)
                if self.registry is not None:
                    upkeep.start_soon(self.registry.heartbeat_loop, self)
                if self.semaphore is not None:
                    upkeep.start_soon(self.semaphore.renew_loop)
                async with anyio.create_task_group() as fetch:
                    fetch.start_soon(self._fetch_loop, jobs, burst)

                    async def stop_fetching() -> None:
                        await stop.wait()
                        fetch.cancel_scope.cancel()

                    fetch.start_soon(stop_fetching)
                    if burst:
                        # _fetch_loop returns on its own; don't wait for `stop`.
                        pass
                await self._drain()
                upkeep.cancel_scope.cancel()
            self.queue.appender = None
        if self.registry is not None:
            await self.registry.unregister(self)

    async def _fetch_loop(self, jobs: anyio.abc.TaskGroup, burst: bool) -> None:
        own_checked = False
        try:
            while True:
                if self.free <= 0:
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                    continue
                entries: list[Entry] = []
                try:
                    # GPU slots first, shared with every process on this GPU:
                    # read no more entries than we may run at once.
                    async with self._grant(self.free) as grant:
                        if not grant:
                            await anyio.sleep(
                                self.semaphore.poll_seconds if self.semaphore else 0.1
                            )
                            continue
                        want = len(grant)
                        if not own_checked:
                            # Our own pending entries from a previous life (same
                            # stable consumer name): the seed's RecoverJobs.
                            entries = await self.queue.read(
                                self.model, self.consumer, want, None, own=True
                            )
                            own_checked = True
                        if time.monotonic() >= self._next_reclaim and len(entries) < want:
                            reclaimed = await self.queue.reclaim(
                                self.model, self.consumer, want - len(entries)
                            )
                            if reclaimed:
                                log.info("reclaimed %d job(s) from dead workers", len(reclaimed))
                                if self.metrics:
                                    self.metrics.reclaimed.inc(len(reclaimed))
                            entries += reclaimed
                            self._next_reclaim = (
                                time.monotonic() + self.queue.settings.job_lease_seconds / 4
                            )
                        if not entries:
                            block = 10 if burst else self.block_ms
                            entries = await self.queue.read(self.model, self.consumer, want, block)
                        for entry in entries:
                            if entry.entry_id in self.active:
                                continue
                            self.active[entry.entry_id] = Active(entry, 0, 0)  # reserve the slot
                            grant.assign(entry.entry_id)
                            jobs.start_soon(self._run_job, entry)
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # Redis lost its data: recreate the group
                        await self._with_backoff(lambda: self.queue.ensure_group(self.model))
                        continue
                    raise
                except (RedisError, OSError) as exc:
                    log.warning("redis unavailable (%s); retrying", exc)
                    await anyio.sleep(0.5)
                    continue
                if burst and not entries and not self.active:
                    return
        finally:
            self._stopping = True

    async def _lease_loop(self) -> None:
        """Renew leases well inside JOB_LEASE_SECONDS; stop jobs we lost."""
        interval = self.queue.settings.job_lease_seconds / 3
        rounds = 0
        while True:
            await anyio.sleep(interval)
            rounds += 1
            if rounds % 30 == 0:
                await self._prune_consumers()
            ids = [eid for eid, a in self.active.items() if a.attempt]
            try:
                lost = await self.queue.refresh(self.model, self.consumer, ids)
            except (RedisError, OSError) as exc:
                log.warning("lease refresh failed (%s)", exc)
                continue
            for eid in lost:
                if (job := self.active.get(eid)) is not None:
                    log.warning("lease lost for job %s; stopping it", job.entry.job_id)
                    job.stop("stale")

    async def _prune_consumers(self) -> None:
        """Forget consumers of workers long gone, once their entries have been
        claimed (pitfall: DELCONSUMER on a consumer with pending entries
        orphans them)."""
        try:
            live = {w.id for w in await live_workers(self.queue.redis)}
            removed = await self.queue.prune_consumers(
                self.model, live | {self.consumer}, 10 * self.queue.lease_ms
            )
        except (RedisError, OSError) as exc:
            log.warning("consumer cleanup skipped (%s)", exc)
            return
        if removed:
            log.info("removed %d gone consumer(s): %s", len(removed), ", ".join(removed))

    async def _drain(self) -> None:
        """Shutdown: let running jobs finish within the grace period, then
        stop them and hand them back so another worker takes them at once."""
        if not self.active:
            return
        log.info("draining %d job(s) for up to %.0fs", len(self.active), self.shutdown_grace)
        with anyio.move_on_after(self.shutdown_grace):
            while self.active:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
        for job in list(self.active.values()):
            job.stop("handback")

    # -- one job ------------------------------------------------------------

    async def _run_job(self, entry: Entry) -> None:
        # Each job runs in its own task, so these stay on this job's log lines.
        logs.job_id.set(entry.job_id)
        try:
            started = await self._with_backoff(
                lambda: self.queue.start(self.model, entry, self.consumer)
            )
            if isinstance(started, str):
                log.info("job %s skipped (%s)", entry.job_id, started)
                if self.metrics:
                    self.metrics.job_skipped(started)
                return
            await self._generate(entry, started)
        finally:
            self.active.pop(entry.entry_id, None)
            if self.semaphore is not None:
                await self.semaphore.release(entry.entry_id)
            self._slot_freed.set()
            if self.metrics:
                self.metrics.active.set(len(self.active))

    async def _generate(self, entry: Entry, started: Started) -> None:
        request = decode_request(entry.payload)
        logs.request_id.set(request.request_id or None)
        job = Active(entry, started.attempt, started.deadline_ms)
        self.active[entry.entry_id] = job
        if self.metrics:
            self.metrics.active.set(len(self.active))
            self.metrics.job_started(started.attempt, started.created_at_ms)
        resume = [Piece(e.token, e.text) for e in started.logged]
        # What the log holds (earlier attempts, then ours as it is accepted):
        # the record's final text is exactly what a client can have seen.
        sent: list[LogEntry] = list(started.logged)
        seq = len(resume)
        buffer: list[LogEntry] = []
        wake = anyio.Event()
        finished = False
        done: Done | None = None
        t0 = time.monotonic()
        first_token_at: float | None = None

        async def publish() -> None:
            # One append in flight per job; tokens made meanwhile ride in the
            # next one, so a slow Redis round trip coalesces instead of lagging.
            nonlocal seq, wake
            while True:
                await wake.wait()
                wake = anyio.Event()
                while buffer:
                    batch = buffer[:]
                    del buffer[:]
                    outcome = await self._with_backoff(
                        lambda b=batch, s=seq: self.queue.append(
                            self.model, entry.job_id, job.attempt, s, b
                        )
                    )
                    if outcome != "ok":
                        job.stop(outcome)
                        return
                    seq += len(batch)
                    sent.extend(batch)
                if finished:
                    return

        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            try:
                async with contextlib.aclosing(
                    self.engine.generate(request.messages, request.params, resume, job.cancel)
                ) as items:
                    async for item in items:
                        if isinstance(item, Done):
                            done = item
                            break
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                        buffer.append(LogEntry(item.token, item.text))
                        wake.set()
                        if now_ms() >= job.deadline_ms:
                            job.stop("expired")
                        if job.stop_reason is not None:
                            break
            except Exception as exc:  # the engine failed this request
                error = exc
            finished = True
            wake.set()

        if job.stop_reason == "stale":
            return  # another attempt owns the job; write nothing
        if isinstance(error, EngineError) and error.permanent:
            # The request itself is at fault (e.g. too long): fail it now with
            # a code the gateway maps to a 4xx; no retry, no dead letter.
            end = End(status=JobStatus.FAILED.value, code=error.code, message=str(error))
            await self._with_backoff(
                lambda: self.queue.finish(
                    self.model,
                    entry,
                    job.attempt,
                    JobStatus.FAILED.value,
                    encode(end),
                    {"error": str(error), "error_code": error.code},
                )
            )
            return
        if error is not None:
            await self._fail(job, error)
            return
        if job.stop_reason == "handback":
            await self.queue.requeue(self.model, entry, job.attempt, self.consumer, error=None)
            log.info("job %s handed back at shutdown", entry.job_id)
            return
        status = {
            None: JobStatus.COMPLETED,
            "cancel": JobStatus.CANCELLED,
            "expired": JobStatus.EXPIRED,
        }[job.stop_reason]
        finish_reason = done.finish_reason if done else "cancelled"
        prompt_tokens = done.prompt_tokens if done else 0
        completion = sum(1 for e in sent if e.token >= 0)  # -1: a text tail, no token
        end = End(
            status=status.value,
            finish_reason=finish_reason if status is JobStatus.COMPLETED else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            code={"cancelled": "cancelled", "expired": "timeout"}.get(status.value),
            message={
                "cancelled": "the job was cancelled",
                "expired": "the job reached its deadline before it finished",
            }.get(status.value),
        )
        ok = await self._with_backoff(
            lambda: self.queue.finish(
                self.model,
                entry,
                job.attempt,
                status.value,
                encode(end),
                {
                    "text": "".join(e.text for e in sent),
                    "finish_reason": end.finish_reason or "",
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                },
            )
        )
        self.jobs_done += 1
        if self.metrics and ok:
            new_tokens = completion - sum(1 for e in started.logged if e.token >= 0)
            self.metrics.job_finished(
                status.value, new_tokens, t0, first_token_at, started.created_at_ms
            )
        if ok:
            # Carries job_id and request_id (context vars): the worker's end of a request's path.
            log.info(
                "job %s: %s, %d prompt + %d completion tokens",
                entry.job_id,
                status.value,
                prompt_tokens,
                completion,
            )
        else:
            log.warning("job %s: finish refused (stale attempt %d)", entry.job_id, job.attempt)

    async def _fail(self, job: Active, error: BaseException) -> None:
        # Exponential backoff with jitter before the next attempt may start.
        delay = min(self.queue.lease_ms, int(500 * 2 ** (job.attempt - 1)))
        delay = int(delay * random.uniform(0.5, 1.0))
        message = f"{type(error).__name__}: {error}"
        outcome = await self._with_backoff(
            lambda: self.queue.requeue(
                self.model, job.entry, job.attempt, self.consumer, error=message, delay_ms=delay
            )
        )
        if outcome == "requeued":
            # Our own XAUTOCLAIM may take the retry as soon as its backoff ends.
            self._next_reclaim = min(self._next_reclaim, time.monotonic() + delay / 1000 + 0.05)
        log.warning(
            "job %s attempt %d failed (%s): %s", job.entry.job_id, job.attempt, outcome, message
        )
        if self.metrics and outcome == "dead":
            self.metrics.dead_lettered.inc()

    async def _with_backoff(self, call):  # type: ignore[no-untyped-def]
        """Retry a Redis step through an outage (the client retries too, but
        a restart can outlast its budget). Fenced scripts make retries safe."""
        delay = 0.1
        while True:
            try:
                return await call()
            except ResponseError as exc:
                if "NOGROUP" in str(exc) or "LOADING" in str(exc):
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
