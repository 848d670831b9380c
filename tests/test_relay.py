"""gateway/relay.py: each sequence number reaches the client once, in order,
whatever pub/sub drops, repeats or delivers late. The relay's inputs are test
doubles (the job's log and record, and its channel driven by a scripted
worker), so the logic runs without Redis; the process tests cover the real
thing."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import pytest

from gateway.hub import RESYNC
from gateway.relay import Idle, Item, Relay, Text
from streamworker.protocol.outcomes import EndCode, JobStatus
from streamworker.protocol.record import JobRecord
from streamworker.protocol.wire import End, LogEntry, Status, Tokens, encode

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

MODEL, JOB = "m", "chatcmpl-test"

# One step of the worker: changes the job, returns what reached the channel
# (None: the message was lost).
Step = Callable[[], bytes | None]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class InMemoryJob:
    """Test double for the two JobClient reads the relay makes (the token log
    and the record) over one job held in memory, with steps that change it as
    a worker's scripts would."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.status = JobStatus.RUNNING
        self.gone = False
        self.log_reads: list[int] = []
        # Runs once, right after the next log read: a worker moving on
        # between two of the relay's reads.
        self.after_log_read: Callable[[], None] | None = None

    def append(self, *texts: str, since: int | None = None) -> bytes:
        """append.lua: log the tokens; the event published carries the log
        from `since` (default: the new tokens; earlier: a resent batch)."""
        first = len(self.entries)
        self.entries.extend(LogEntry(first + i, t) for i, t in enumerate(texts))
        seq = first if since is None else since
        return encode(Tokens(seq=seq, attempt=1, tokens=self.entries[seq:]))

    def end(self) -> End:
        record = self._record()
        assert record is not None
        end = record.end()
        assert end is not None
        return end

    # -- worker steps, run when the relay waits for its next message ----------

    def send(self, *texts: str, since: int | None = None) -> Step:
        return lambda: self.append(*texts, since=since)

    def lose(self, *texts: str) -> Step:
        """Tokens logged, their event lost (a late subscriber, a reconnect)."""

        def step() -> None:
            self.append(*texts)

        return step

    def repeat(self, seq: int) -> Step:
        """An event for a token already sent, arriving again or late."""
        return lambda: encode(Tokens(seq=seq, attempt=1, tokens=self.entries[seq : seq + 1]))

    def finish(self, status: JobStatus = JobStatus.COMPLETED, *, lost: bool = False) -> Step:
        """finish.lua: the record's terminal status, then the end event."""

        def step() -> bytes | None:
            self.status = status
            return None if lost else encode(self.end())

        return step

    # -- what the relay reads ---------------------------------------------------

    async def log(self, model: str, job_id: str, start: int = 0) -> list[LogEntry]:
        self.log_reads.append(start)
        entries = self.entries[start:]
        if (after := self.after_log_read) is not None:
            self.after_log_read = None
            after()
        return entries

    async def record(self, model: str, job_id: str) -> JobRecord | None:
        return self._record()

    def _record(self) -> JobRecord | None:
        if self.gone:
            return None
        done = self.status == JobStatus.COMPLETED
        return JobRecord(
            id=JOB,
            status=self.status,
            model=MODEL,
            created_at=0,
            deadline=0,
            finish_reason="length" if done else None,
            completion_tokens=len(self.entries),
        )


class ScriptedChannel:
    """Test double for the hub's queue of the job's channel: each get() runs
    the worker's next step and hands over what it published; with no step
    left it waits, as a quiet channel does."""

    def __init__(self, *steps: Step) -> None:
        self.steps: deque[Step] = deque(steps)

    def then(self, step: Step) -> None:
        self.steps.append(step)

    async def get(self) -> bytes:
        while self.steps:
            message = self.steps.popleft()()
            if message is not None:
                return message
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def resync() -> bytes:
    return RESYNC


def relay_for(job: InMemoryJob, channel: ScriptedChannel, keepalive: float = 5.0) -> Relay:
    return Relay(job, MODEL, JOB, channel, keepalive=keepalive)  # type: ignore[arg-type]


async def drain(relay: Relay, on_item: Callable[[Item], None] | None = None) -> list[Item]:
    """Everything the relay yields up to the job's end (bounded: a relay that
    would wait forever fails the test instead of hanging it)."""
    items: list[Item] = []
    async with asyncio.timeout(2):
        async for item in relay:
            items.append(item)
            if on_item is not None:
                on_item(item)
    return items


def texts(items: list[Item]) -> list[tuple[int, str]]:
    return [(i.seq, i.text) for i in items if isinstance(i, Text)]


async def test_events_in_order() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(job.send("a"), job.send("b", "c"), job.finish())
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(0, "a"), (2, "bc")]
    assert items[-1] == End(status="completed", finish_reason="length", completion_tokens=3)
    # In-order events need the log only to start and at the end.
    assert job.log_reads == [0, 3]


async def test_status_events_pass_through() -> None:
    job = InMemoryJob()
    running = encode(Status(status="running", attempt=2))
    channel = ScriptedChannel(lambda: running, job.send("a"), job.finish())
    items = await drain(relay_for(job, channel))
    assert items[0] == Status(status="running", attempt=2)
    assert texts(items) == [(0, "a")]


async def test_a_repeated_event_is_dropped() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(
        job.send("a"), job.repeat(0), job.send("b"), job.repeat(0), job.repeat(1), job.finish()
    )
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(0, "a"), (1, "b")]


async def test_a_gap_is_filled_from_the_log_once() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(
        job.lose("a"),
        job.lose("b"),
        job.send("c"),  # seq 2 arrives first: 0..2 come from one log read
        job.repeat(1),  # the lost events turn up late: repeats now
        job.repeat(0),
        job.send("d"),
        job.finish(),
    )
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(2, "abc"), (3, "d")]
    assert job.log_reads == [0, 0, 4]


async def test_overlapping_batches_send_only_what_is_new() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(
        job.send("a", "b", "c"),
        # Resent batches that start before the expected seq and end after it.
        job.send("d", since=1),
        job.send("e", since=2),
        job.finish(),
    )
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(2, "abc"), (3, "d"), (4, "e")]


async def test_resync_catches_up_and_goes_on() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(
        # Published while the hub was reconnecting: lost.
        job.lose("a"),
        job.lose("b"),
        resync,
        job.send("c"),
        job.finish(),
    )
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(1, "ab"), (2, "c")]
    assert items[-1] == job.end()


async def test_resync_after_the_job_ended() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(job.lose("a"), job.lose("b"), job.finish(lost=True), resync)
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(1, "ab")]
    assert items[-1] == job.end()


async def test_a_job_ending_during_a_resync_loses_no_token() -> None:
    job = InMemoryJob()
    channel = ScriptedChannel(job.send("a"), resync)

    def worker_finishes() -> None:
        # Logged and ended at once; the events follow on the channel.
        last = job.append("b")
        job.status = JobStatus.COMPLETED
        channel.then(lambda: last)
        channel.then(lambda: encode(job.end()))

    def after(item: Item) -> None:
        if item == Text(0, "a"):
            # The relay's next log read is the RESYNC's catch-up.
            job.after_log_read = worker_finishes

    items = await drain(relay_for(job, channel), after)
    assert texts(items) == [(0, "a"), (1, "b")]
    assert items[-1] == job.end()


async def test_the_end_event_before_the_last_tokens() -> None:
    job = InMemoryJob()
    # The last two events are still on their way when the end arrives.
    channel = ScriptedChannel(job.send("a"), job.lose("b"), job.lose("c"), job.finish())
    items = await drain(relay_for(job, channel))
    assert texts(items) == [(0, "a"), (2, "bc")]
    assert items[-1] == job.end()


async def test_silence_checks_the_record() -> None:
    job = InMemoryJob()

    def after(item: Item) -> None:
        if isinstance(item, Idle):
            # One more token and the end, both events lost.
            job.append("b")
            job.status = JobStatus.COMPLETED

    items = await drain(relay_for(job, ScriptedChannel(job.send("a")), keepalive=0.01), after)
    # The keep-alive says what the record said.
    assert items[:2] == [Text(0, "a"), Idle("running")]
    assert texts(items) == [(0, "a"), (1, "b")]
    assert items[-1] == job.end()


async def test_a_vanished_record_ends_the_relay() -> None:
    job = InMemoryJob()
    job.gone = True
    items = await drain(relay_for(job, ScriptedChannel(), keepalive=0.01))
    assert items == [End(status="failed", code=EndCode.RECORD_GONE.value)]


async def test_resumed_relay_of_a_finished_job() -> None:
    job = InMemoryJob()
    job.append("a", "b")
    job.append("c")
    job.status = JobStatus.COMPLETED
    relay = relay_for(job, ScriptedChannel())
    relay.resume = True
    items = await drain(relay)
    assert texts(items) == [(2, "abc")]
    assert items[-1] == job.end()
    # Last-Event-ID 1: only what follows it.
    relay = relay_for(job, ScriptedChannel())
    relay.resume, relay.next_seq = True, 2
    items = await drain(relay)
    assert texts(items) == [(2, "c")]
    assert items[-1] == job.end()


async def test_resumed_relay_of_a_running_job_goes_live() -> None:
    job = InMemoryJob()
    job.append("a")  # logged before the relay subscribed
    channel = ScriptedChannel(job.repeat(0), job.send("b"), job.finish(JobStatus.CANCELLED))
    relay = relay_for(job, channel)
    relay.resume = True
    items = await drain(relay)
    assert texts(items) == [(0, "a"), (1, "b")]
    assert items[-1] == End(status="cancelled", completion_tokens=2, code="cancelled")
