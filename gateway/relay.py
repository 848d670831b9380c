"""A job's channel -> an ordered stream of events, each sequence number once.

Pub/sub can drop messages (a late subscriber, a reconnect); the job's token
log cannot. The relay forwards live token events, and whenever it sees a gap
(a RESYNC from the hub, a first sequence number beyond the one it expects, or
the end of the job) it reads the missing tokens from the log. Sequence numbers
below the expected one are duplicates (a resent batch) and are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from gateway.hub import RESYNC
from streamworker.protocol.outcomes import EndCode, JobStatus
from streamworker.protocol.wire import End, LogEntry, Status, Tokens, decode_event

if TYPE_CHECKING:
    from streamworker.protocol.client import JobClient


@dataclass(frozen=True, slots=True)
class Text:
    """New log entries, in order: `text` is all of them joined (the jobs
    API's view); `entries` keep each token's choice and logprobs for the
    renderers."""

    seq: int  # sequence number of the last token in this piece
    text: str
    entries: tuple[LogEntry, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing happened for a keep-alive interval."""

    status: str


Item = Text | Status | End | Idle


class Relay:
    def __init__(
        self,
        jobs: JobClient,
        model: str,
        job_id: str,
        inbox: asyncio.Queue[bytes],
        *,
        keepalive: float = 5.0,
    ) -> None:
        self.jobs = jobs
        self.model = model
        self.job_id = job_id
        self.inbox = inbox
        self.next_seq = 0
        self.keepalive = keepalive
        self.status = JobStatus.QUEUED.value
        # Set for a job that may have ended already (events endpoint, a
        # retried Idempotency-Key): check its record before waiting.
        self.resume = False

    def _take(self, first: int, entries: list[LogEntry]) -> Text | None:
        skip = self.next_seq - first
        if skip >= len(entries) or skip < 0:
            return None
        fresh = entries[skip:]
        self.next_seq = first + len(entries)
        return Text(self.next_seq - 1, "".join(e.text for e in fresh), tuple(fresh))

    async def _catch_up(self) -> Text | None:
        entries = await self.jobs.log(self.model, self.job_id, self.next_seq)
        return self._take(self.next_seq, entries) if entries else None

    async def _end_from_record(self) -> End | None:
        record = await self.jobs.record(self.model, self.job_id)
        if record is None:
            return End(status=JobStatus.FAILED.value, code=EndCode.RECORD_GONE.value)
        self.status = record.status.value
        return record.end()

    async def __aiter__(self) -> AsyncIterator[Item]:
        # Whatever the log holds already (a resumed or duplicate request).
        if (text := await self._catch_up()) is not None:
            yield text
        if self.resume and (end := await self._end_from_record()) is not None:
            if (text := await self._catch_up()) is not None:
                yield text
            yield end
            return
        while True:
            try:
                raw = await asyncio.wait_for(self.inbox.get(), timeout=self.keepalive)
            except TimeoutError:
                # Silence: make sure we did not miss the end of the job.
                end = await self._end_from_record()
                if end is not None:
                    if (text := await self._catch_up()) is not None:
                        yield text
                    yield end
                    return
                yield Idle(self.status)
                continue
            if raw == RESYNC:
                # The record first, then the log: a job that ended before the
                # record was read had logged all its tokens, whereas tokens
                # logged after a first log read would be lost with the return.
                end = await self._end_from_record()
                if (text := await self._catch_up()) is not None:
                    yield text
                if end is not None:
                    yield end
                    return
                continue
            try:
                event = decode_event(raw)
            except msgspec.DecodeError:
                continue
            if isinstance(event, Tokens):
                if event.seq > self.next_seq:  # a gap: fill it from the log
                    if (text := await self._catch_up()) is not None:
                        yield text
                    continue
                if (text := self._take(event.seq, event.tokens)) is not None:
                    yield text
            elif isinstance(event, Status):
                self.status = event.status
                yield event
            else:
                # The log is complete once the job ended: send what is missing.
                if (text := await self._catch_up()) is not None:
                    yield text
                self.status = event.status
                yield event
                return
