"""The worker's loops: free slots -> read -> start -> run (job_run.py).

One worker process serves one model with `slots` concurrent jobs. It reads no
more stream entries than it has free slots (an entry's idle clock starts at
delivery), renews the lease on the entries it runs, reclaims entries whose
owner died, and on shutdown drains, then hands unfinished jobs back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError, ResponseError

from streamworker.embedding_run import EmbeddingRun
from streamworker.job_run import JobRun, bind_log_context
from streamworker.metrics import job_owner
from streamworker.protocol.outcomes import StopReason
from streamworker.protocol.wire import JobKind, decode_request
from streamworker.retry import with_backoff
from streamworker.semaphore import Grant

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from streamworker.engines.base import Engine
    from streamworker.engines.embedder import Embedder
    from streamworker.metrics import WorkerMetrics
    from streamworker.protocol.consumer import Entry, JobConsumer
    from streamworker.semaphore import GpuSemaphore

log = logging.getLogger("streamworker.worker")


class Worker:
    def __init__(
        self,
        consumer: JobConsumer,
        engine: Engine,
        *,
        slots: int,
        block_ms: int = 1000,
        shutdown_grace: float = 25.0,
        metrics: WorkerMetrics | None = None,
        semaphore: GpuSemaphore | None = None,
        live_workers: Callable[[], Awaitable[set[str]]] | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.consumer = consumer
        self.engine = engine
        self.slots = slots
        self.block_ms = block_ms
        self.shutdown_grace = shutdown_grace
        self.metrics = metrics
        self.semaphore = semaphore
        self.live_workers = live_workers
        self.embedder = embedder
        # entry id -> its job; None while the entry is read but not started.
        self.active: dict[str, JobRun | EmbeddingRun | None] = {}
        self._slot_freed = anyio.Event()
        # When to look for entries of dead workers (or our own retries) next.
        self._next_reclaim = 0.0
        # Set once the shutdown grace is over: every job still here goes back.
        self._handing_back = False
        self.jobs_done = 0
        # REDIS_WAIT_REPLICAS > 0: each finished job's result is confirmed on
        # the replicas before its slot takes the next job (streamworker/__main__.py).
        self.confirm_finished: Callable[[str], Awaitable[object]] | None = None

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def model(self) -> str:
        return self.consumer.model

    @property
    def free(self) -> int:
        return self.slots - len(self.active)

    def _grant(self, n: int) -> contextlib.AbstractAsyncContextManager[Grant]:
        if self.semaphore is None:
            return contextlib.nullcontext(Grant([""] * n))
        return self.semaphore.grant(n)

    async def run(self, *, stop: anyio.Event | None = None, burst: bool = False) -> None:
        """Serve until `stop` is set (then drain and hand back). With
        burst=True, return once the queue is empty and no job runs (tests)."""
        stop = stop or anyio.Event()
        await with_backoff(self.consumer.ensure_group)
        async with anyio.create_task_group() as jobs:
            async with anyio.create_task_group() as upkeep:
                upkeep.start_soon(self._lease_loop)
                if self.slots > 1:
                    upkeep.start_soon(self.consumer.batch_appends)
                if self.semaphore is not None:
                    upkeep.start_soon(self.semaphore.renew_loop)
                async with anyio.create_task_group() as fetch:
                    fetch.start_soon(self._fetch_loop, jobs, burst, fetch.cancel_scope)

                    async def stop_fetching() -> None:
                        await stop.wait()
                        fetch.cancel_scope.cancel()

                    fetch.start_soon(stop_fetching)
                await self._drain()
                upkeep.cancel_scope.cancel()

    async def _fetch_loop(self, jobs: TaskGroup, burst: bool, scope: anyio.CancelScope) -> None:
        own_checked = False
        while True:
            if self.free <= 0:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
                continue
            try:
                entries = await self._fetch(own_checked, burst)
                own_checked = True
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data: recreate the group
                    await with_backoff(self.consumer.ensure_group)
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                await anyio.sleep(0.5)
                continue
            for entry in entries:
                jobs.start_soon(self._run_job, entry)
            if burst and not entries and not self.active:
                scope.cancel()
                return

    async def _fetch(self, own_checked: bool, burst: bool) -> list[Entry]:
        """Entries to run, no more than the GPU slots we could take: first our
        own pending entries from a previous life (the same stable consumer
        name), then those of dead workers, then new ones."""
        entries: list[Entry] = []
        async with self._grant(self.free) as grant:
            if not grant:
                await anyio.sleep(self.semaphore.poll_seconds if self.semaphore else 0.1)
                return []
            want = len(grant)
            if not own_checked:
                entries = await self.consumer.read(want, None, own=True)
            if time.monotonic() >= self._next_reclaim and len(entries) < want:
                reclaimed = await self.consumer.reclaim(want - len(entries))
                if reclaimed:
                    log.info("reclaimed %d job(s) from dead workers", len(reclaimed))
                    if self.metrics:
                        self.metrics.reclaimed.inc(len(reclaimed))
                entries += reclaimed
                self._next_reclaim = time.monotonic() + self.consumer.lease_seconds / 4
            if not entries:
                block = 10 if burst else self.block_ms
                entries = await self.consumer.read(want, block)
            fresh = [e for e in entries if e.entry_id not in self.active]
            for entry in fresh:
                self.active[entry.entry_id] = None  # the slot is taken from now on
                grant.assign(entry.entry_id)
        return fresh

    async def _lease_loop(self) -> None:
        """Renew leases well inside the lease time; stop jobs we lost."""
        interval = self.consumer.lease_seconds / 3
        rounds = 0
        while True:
            await anyio.sleep(interval)
            rounds += 1
            if rounds % 30 == 0:
                await self._prune_consumers()
            ids = [eid for eid, job in self.active.items() if job is not None]
            try:
                lost = await self.consumer.refresh(ids)
            except (RedisError, OSError) as exc:
                log.warning("lease refresh failed (%s)", exc)
                continue
            for eid in lost:
                if (job := self.active.get(eid)) is not None:
                    log.warning("lease lost for job %s; stopping it", job.job_id)
                    job.stop(StopReason.STALE)

    async def _prune_consumers(self) -> None:
        """Forget consumers of workers long gone, once their entries have been
        claimed (XGROUP DELCONSUMER on a consumer that still owns entries
        would orphan them)."""
        if self.live_workers is None:
            return
        try:
            live = await self.live_workers()
            removed = await self.consumer.prune_consumers(
                live | {self.name}, 10 * self.consumer.lease_ms
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
        self._handing_back = True
        for job in list(self.active.values()):
            if job is not None:  # None: not started yet; _run_job hands it back
                job.stop(StopReason.HANDBACK)

    async def _run_job(self, entry: Entry) -> None:
        # Each job runs in its own task, so the log context stays with it.
        bind_log_context(entry)
        job_owner.set(entry.owner)
        try:
            started = await with_backoff(lambda: self.consumer.start(entry))
            if isinstance(started, str):
                log.info("job %s skipped (%s)", entry.job_id, started)
                if self.metrics:
                    self.metrics.job_skipped(started)
                return
            request = decode_request(entry.payload)
            bind_log_context(entry, request)
            job: JobRun | EmbeddingRun
            if request.kind is JobKind.EMBEDDING:
                job = EmbeddingRun(
                    self.consumer, self.embedder, entry, started, request, self.metrics
                )
            else:
                job = JobRun(self.consumer, self.engine, entry, started, request, self.metrics)
            job.confirm = self.confirm_finished
            self.active[entry.entry_id] = job
            if self._handing_back:
                job.stop(StopReason.HANDBACK)
            if self.metrics:
                self.metrics.active.set(len(self.active))
                self.metrics.job_started(
                    started.attempt, started.created_at_ms, entry.owner, entry.tier
                )
            await job.run()
            self.jobs_done += 1
            if job.retry_delay_ms:
                # Our own XAUTOCLAIM may take the retry as soon as its backoff ends.
                self._next_reclaim = min(
                    self._next_reclaim, time.monotonic() + job.retry_delay_ms / 1000 + 0.05
                )
        finally:
            self.active.pop(entry.entry_id, None)
            if self.semaphore is not None:
                await self.semaphore.release(entry.entry_id)
            self._slot_freed.set()
            if self.metrics:
                self.metrics.active.set(len(self.active))
