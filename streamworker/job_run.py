"""One job on a worker: run the engine, log and publish its tokens, end it.

Tokens go out through `JobConsumer.append` (one atomic log + publish) with at
most one append in flight per job: tokens made meanwhile ride in the next
one, so a slow Redis round trip coalesces instead of lagging. The job ends
with exactly one write: finish (completed, cancelled, expired, or a
permanent failure), requeue (an engine error, or a hand-back at shutdown),
or nothing at all when another attempt owns the job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from streamworker.engines.base import Done, EngineError
from streamworker.failures import fail_permanently, requeue_after_error
from streamworker.protocol import logs
from streamworker.protocol.outcomes import (
    END_MESSAGES,
    STATUS_CODES,
    STOP_STATUS,
    JobStatus,
    Reply,
    StopReason,
)
from streamworker.protocol.record import choices_field, now_ms
from streamworker.protocol.wire import End, JobKind, JobRequest, LogEntry
from streamworker.retry import with_backoff

if TYPE_CHECKING:
    from streamworker.engines.base import Engine
    from streamworker.metrics import WorkerMetrics
    from streamworker.protocol.consumer import Entry, JobConsumer, Started

log = logging.getLogger("streamworker.job")


class UnsupportedKind(EngineError):
    """This worker does not serve the job's kind: no retry can help."""

    permanent = True


# The kinds whose answer is generated text, token by token (this module).
GENERATED_KINDS = frozenset({JobKind.CHAT, JobKind.COMPLETION})


class JobRun:
    def __init__(
        self,
        consumer: JobConsumer,
        engine: Engine,
        entry: Entry,
        started: Started,
        request: JobRequest,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.consumer = consumer
        self.engine = engine
        self.entry = entry
        self.attempt = started.attempt
        self.deadline_ms = started.deadline_ms
        self.created_at_ms = started.created_at_ms
        self.request = request
        self.metrics = metrics
        self.cancel = threading.Event()
        self.stop_reason: StopReason | None = None
        # What earlier attempts delivered: the engine resumes after it.
        self.resumed = list(started.logged)
        # What the log holds (earlier attempts, then ours as it is accepted):
        # the record's final text is exactly what a client can have seen.
        self.sent: list[LogEntry] = list(started.logged)
        self._buffer: list[LogEntry] = []
        self._wake = anyio.Event()
        # REDIS_WAIT_REPLICAS: waits until replicas hold the finished result
        # (set by the worker; None: the master's word is enough).
        self.confirm: Callable[[str], Awaitable[object]] | None = None
        self._generating = True
        self._done: Done | None = None
        self._error: Exception | None = None
        self._first_token_at: float | None = None
        self.retry_delay_ms = 0  # set when the job was requeued after an error

    @property
    def job_id(self) -> str:
        return self.entry.job_id

    def stop(self, reason: StopReason) -> None:
        """Stop early (the first reason wins); the engine sees it at its next token."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()

    async def run(self) -> None:
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._publish)
            try:
                await self._generate()
            except Exception as exc:  # the engine failed this request
                self._error = exc
            self._generating = False
            self._wake.set()
        await self._conclude(t0)

    async def _generate(self) -> None:
        if self.request.kind not in GENERATED_KINDS:
            raise UnsupportedKind(f"this worker does not run jobs of kind {self.request.kind!r}")
        # The engine yields log entries (with their choice and logprobs), so
        # what it made is logged as it is, and a resume sees all of it.
        items = self.engine.generate(self.request, self.resumed, self.cancel)
        async with contextlib.aclosing(items) as pieces:
            async for item in pieces:
                if isinstance(item, Done):
                    self._done = item
                    return
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self._buffer.append(item)
                self._wake.set()
                if now_ms() >= self.deadline_ms:
                    self.stop(StopReason.EXPIRED)
                if self.stop_reason is not None:
                    return

    async def _publish(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._buffer:
                batch, self._buffer = self._buffer, []
                seq = len(self.sent)
                outcome = await with_backoff(
                    lambda b=batch, s=seq: self.consumer.append(self.job_id, self.attempt, s, b)
                )
                if outcome != Reply.OK:
                    self.stop(StopReason(outcome))
                    return
                self.sent.extend(batch)
            if not self._generating:
                return

    async def _conclude(self, t0: float) -> None:
        if self.stop_reason is StopReason.STALE:
            return  # another attempt owns the job; write nothing
        error = self._error
        if isinstance(error, EngineError) and error.permanent:
            await fail_permanently(self.consumer, self.entry, self.attempt, error)
            return
        if error is not None:
            self.retry_delay_ms = await requeue_after_error(
                self.consumer, self.entry, self.attempt, error, self.metrics
            )
            return
        if self.stop_reason is StopReason.HANDBACK:
            await with_backoff(lambda: self.consumer.requeue(self.entry, self.attempt, error=None))
            log.info("job %s handed back at shutdown", self.job_id)
            return
        await self._finish(t0)

    async def _finish(self, t0: float) -> None:
        status = STOP_STATUS[self.stop_reason]
        done = self._done
        prompt_tokens = done.prompt_tokens if done else 0
        completion = completion_tokens(self.sent)
        code = STATUS_CODES.get(status)
        completed = status is JobStatus.COMPLETED
        n = max(1, self.request.params.n)
        reasons = list(done.finish_reasons) if done and completed and n > 1 else None
        end = End(
            status=status.value,
            finish_reason=(done.finish_reason if done else None) if completed else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            code=code.value if code else None,
            message=END_MESSAGES[code] if code else None,
            finish_reasons=reasons,
        )
        texts = choice_texts(self.sent, n)
        fields: dict[str, str | int] = {
            "text": texts[0],
            "finish_reason": end.finish_reason or "",
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
        }
        if n > 1:
            fields["choices"] = choices_field(texts, reasons)
        ok = await with_backoff(lambda: self.consumer.finish(self.entry, self.attempt, end, fields))
        if not ok:
            log.warning("job %s: finish refused (stale attempt %d)", self.job_id, self.attempt)
            return
        if self.confirm is not None:
            await self.confirm(self.job_id)
        if self.metrics:
            new_tokens = completion - completion_tokens(self.resumed)
            self.metrics.job_finished(
                status.value, new_tokens, t0, self._first_token_at, self.created_at_ms
            )
        # Carries job_id and request_id (context vars): the worker's end of a request's path.
        log.info(
            "job %s: %s, %d prompt + %d completion tokens",
            self.job_id,
            status.value,
            prompt_tokens,
            completion,
        )


def bind_log_context(entry: Entry, request: JobRequest | None = None) -> None:
    """This task's log lines carry the job (and the request that made it)."""
    logs.job_id.set(entry.job_id)
    if request is not None:
        logs.request_id.set(request.request_id or None)


def completion_tokens(entries: list[LogEntry]) -> int:
    """Generated tokens of every choice: a text tail (-1) and an echoed
    prompt token are not completion tokens."""
    return sum(1 for e in entries if e.token >= 0 and not e.echo)


def choice_texts(entries: list[LogEntry], n: int) -> list[str]:
    """Each choice's text, echo included: its entries in log order."""
    parts: list[list[str]] = [[] for _ in range(n)]
    for e in entries:
        if 0 <= e.choice < n:
            parts[e.choice].append(e.text)
    return ["".join(p) for p in parts]
