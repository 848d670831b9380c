"""What a run does when its engine fails: end the job at once when the
request itself is at fault, or hand it back to be tried again later.
Shared by every kind of run (text generation, embeddings)."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from streamworker.protocol.outcomes import JobStatus, Reply
from streamworker.protocol.wire import End
from streamworker.retry import with_backoff

if TYPE_CHECKING:
    from streamworker.engines.base import EngineError
    from streamworker.metrics import WorkerMetrics
    from streamworker.protocol.consumer import Entry, JobConsumer

log = logging.getLogger("streamworker.failures")


async def fail_permanently(
    consumer: JobConsumer, entry: Entry, attempt: int, error: EngineError
) -> None:
    """The request itself is at fault (too long, a bad grammar): fail it now
    with a code the gateway maps to a 4xx; no retry, no dead letter."""
    code = error.code.value
    end = End(status=JobStatus.FAILED.value, code=code, message=str(error))
    fields: dict[str, str | int] = {"error": str(error), "error_code": code}
    await with_backoff(lambda: consumer.finish(entry, attempt, end, fields))


async def requeue_after_error(
    consumer: JobConsumer,
    entry: Entry,
    attempt: int,
    error: Exception,
    metrics: WorkerMetrics | None = None,
) -> int:
    """Hand the job back after an engine error (a failure: at the attempt
    limit it is dead-lettered). Returns how many ms the retry waits, 0 when
    it was not requeued."""
    # Exponential backoff with jitter before the next attempt may start.
    delay = min(consumer.lease_ms, int(500 * 2 ** (attempt - 1)))
    delay = int(delay * random.uniform(0.5, 1.0))
    message = f"{type(error).__name__}: {error}"
    outcome = await with_backoff(
        lambda: consumer.requeue(entry, attempt, error=message, delay_ms=delay)
    )
    log.warning("job %s attempt %d failed (%s): %s", entry.job_id, attempt, outcome, message)
    if metrics and outcome == Reply.DEAD:
        metrics.dead_lettered.inc()
    return delay if outcome == Reply.REQUEUED else 0
