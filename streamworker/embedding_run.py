"""One embedding job on a worker: inputs -> vectors -> the job record.

No tokens stream back: the whole answer is written by the fenced finish
step (the record's `result` field, with the record's TTL, then the `end`
event on the channel), so the vectors reach the gateway exactly when the
job ends and a stale attempt can never overwrite a newer one. A worker
killed mid-batch leaves nothing behind; the reclaimed job runs again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from streamworker.engines.base import EngineError
from streamworker.failures import fail_permanently, requeue_after_error
from streamworker.protocol.outcomes import JobStatus, StopReason
from streamworker.protocol.wire import EmbeddingResult, End, encode
from streamworker.retry import with_backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from streamworker.engines.embedder import Embedder
    from streamworker.metrics import WorkerMetrics
    from streamworker.protocol.consumer import Entry, JobConsumer, Started
    from streamworker.protocol.wire import JobRequest

log = logging.getLogger("streamworker.job")


class NoEmbedder(EngineError):
    permanent = True


class EmbeddingRun:
    """The same face as JobRun to the worker's loops: job_id, stop(), run(),
    retry_delay_ms."""

    def __init__(
        self,
        consumer: JobConsumer,
        embedder: Embedder | None,
        entry: Entry,
        started: Started,
        request: JobRequest,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.consumer = consumer
        self.embedder = embedder
        self.entry = entry
        self.attempt = started.attempt
        self.request = request
        self.metrics = metrics
        self.stop_reason: StopReason | None = None
        self.retry_delay_ms = 0
        # REDIS_WAIT_REPLICAS > 0: the finished vectors are confirmed on that
        # many replicas, as a generated answer is (job_run.py).
        self.confirm: Callable[[str], Awaitable[object]] | None = None

    @property
    def job_id(self) -> str:
        return self.entry.job_id

    def stop(self, reason: StopReason) -> None:
        # A llama.cpp batch cannot be interrupted; the reason is honoured
        # when it returns (a stale attempt writes nothing).
        if self.stop_reason is None:
            self.stop_reason = reason

    async def run(self) -> None:
        try:
            if self.embedder is None:
                raise NoEmbedder("this worker has no embedding model")
            vectors, tokens = await anyio.to_thread.run_sync(
                self.embedder.embed, list(self.request.inputs)
            )
        except EngineError as exc:
            if exc.permanent:
                await fail_permanently(self.consumer, self.entry, self.attempt, exc)
            else:
                await self._requeue(exc)
            return
        except Exception as exc:  # the engine failed this attempt: retry later
            await self._requeue(exc)
            return
        if self.stop_reason is StopReason.STALE:
            return  # another attempt owns the job
        if self.stop_reason is StopReason.HANDBACK:
            await with_backoff(lambda: self.consumer.requeue(self.entry, self.attempt, error=None))
            return
        status = JobStatus.CANCELLED if self.stop_reason is StopReason.CANCEL else None
        await self._finish(vectors, tokens, status)

    async def _finish(
        self, vectors: list[list[float]], tokens: list[int], status: JobStatus | None
    ) -> None:
        total = sum(tokens)
        end = End(
            status=(status or JobStatus.COMPLETED).value,
            finish_reason="stop" if status is None else None,
            prompt_tokens=total,
        )
        fields: dict[str, str | int] = {"prompt_tokens": total, "finish_reason": "stop"}
        if status is None:
            fields["result"] = encode(EmbeddingResult.of(vectors, tokens)).decode()
        ok = await with_backoff(lambda: self.consumer.finish(self.entry, self.attempt, end, fields))
        if not ok:
            log.warning("job %s: finish refused (stale attempt %d)", self.job_id, self.attempt)
            return
        if self.confirm is not None:
            await self.confirm(self.job_id)
        log.info("job %s: %d input(s), %d tokens embedded", self.job_id, len(tokens), total)

    async def _requeue(self, error: Exception) -> None:
        self.retry_delay_ms = await requeue_after_error(
            self.consumer, self.entry, self.attempt, error, self.metrics
        )
