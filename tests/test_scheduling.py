"""The scheduler in Redis: tiers, aging and fair shares decide which waiting
job a free slot takes (lua/dispatch.lua). Real Redis, the protocol's own
client and consumer, no worker process: each dispatch is one call, so the
order is exact and these tests are deterministic."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.auth import KeyringError, load_keys_file
from streamworker.metrics import WorkerMetrics, job_owner
from streamworker.protocol import keys
from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import connect
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings, RedisSettings
from streamworker.protocol.wire import GenerationParams, JobRequest, Message

MODEL = "sched"
REQ = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=2))


class Queue:
    """A client and one consumer of MODEL, on settings of the test's choosing."""

    def __init__(self, redis, settings: QueueSettings) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis
        scripts = Scripts(redis)
        self.client = JobClient(redis, scripts, settings)
        self.consumer = JobConsumer(redis, scripts, settings, model=MODEL, name="c1")
        self.n = 0

    async def add(self, tier: str = "default", owner: str = "", weight: float = 1.0) -> str:
        self.n += 1
        job_id = f"{tier}-{owner or 'anon'}-{self.n}"
        await self.client.enqueue(MODEL, job_id, REQ, owner=owner, tier=tier, weight=weight)
        return job_id

    async def take(self, count: int = 1) -> list[str]:
        return [e.job_id for e in await self.consumer.read(count, None)]

    async def drain(self) -> list[str]:
        order: list[str] = []
        while taken := await self.take():
            order += taken
        return order


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    redis = await connect(RedisSettings(redis_url=redis_url))
    q = Queue(redis, QueueSettings(scheduler_aging_seconds=0))
    await q.consumer.ensure_group()
    yield q
    await redis.aclose()


@pytest.mark.anyio
async def test_higher_tier_starts_first_and_fifo_within(queue: Queue) -> None:
    added = [await queue.add(t) for t in ("flex", "default", "priority") * 3]
    order = await queue.drain()
    tiers = [j.split("-")[0] for j in order]
    assert tiers == ["priority"] * 3 + ["default"] * 3 + ["flex"] * 3
    # Within a tier, in arrival order.
    assert order[:3] == [j for j in added if j.startswith("priority")]
    # Every job was dispatched once, now pending in the run stream, still queued.
    assert sorted(order) == sorted(added)
    pending = await queue.redis.xpending(queue.consumer._keys.stream, keys.GROUP)
    assert pending["pending"] == len(added)
    record = await queue.client.record(MODEL, order[0])
    assert record is not None and record.status == "queued"


@pytest.mark.anyio
async def test_a_later_priority_job_overtakes_waiting_flex(queue: Queue) -> None:
    flex = [await queue.add("flex") for _ in range(5)]
    assert await queue.take() == flex[:1]
    urgent = await queue.add("priority")
    assert await queue.take() == [urgent]
    assert await queue.drain() == flex[1:]


@pytest.mark.anyio
async def test_aging_lets_flex_through_under_constant_load(redis_url: str) -> None:
    redis = await connect(RedisSettings(redis_url=redis_url))
    try:
        aging = 0.15
        q = Queue(redis, QueueSettings(scheduler_aging_seconds=aging))
        await q.consumer.ensure_group()
        old_flex = await q.add("flex")
        t0 = time.monotonic()
        # Constant load: a new priority job arrives before every dispatch, so
        # without aging flex would never go.
        started: list[str] = []
        with anyio.fail_after(10):
            while old_flex not in started:
                await q.add("priority")
                started += await q.take()
                await anyio.sleep(0.01)
        waited = time.monotonic() - t0
        # Two tiers below priority: it goes once it has waited 2 x aging.
        assert 2 * aging - 0.02 <= waited < 2 * aging + 1.0, waited
        assert len(started) > 5  # the load really ran meanwhile

        # Aging 0 is strict: the same load starves flex.
        strict = Queue(redis, QueueSettings(scheduler_aging_seconds=0))
        strict.n = q.n
        await strict.drain()
        flex = await strict.add("flex")
        await anyio.sleep(2 * aging + 0.05)
        for _ in range(5):
            await strict.add("priority")
            assert await strict.take() != [flex]
    finally:
        await redis.aclose()


@pytest.mark.anyio
async def test_weighted_shares_while_both_backlogged(queue: Queue) -> None:
    for _ in range(60):
        await queue.add(owner="a", weight=3)
        await queue.add(owner="b", weight=1)
    first = await queue.take(40)
    first += [j for _ in range(20) for j in await queue.take()]
    shares = Counter(j.split("-")[1] for j in first)
    # Deficit round robin in jobs: exactly 3:1 per round of the ring.
    assert shares == {"a": 45, "b": 15}, shares


@pytest.mark.anyio
async def test_small_weights_and_many_keys_still_drain(queue: Queue) -> None:
    # Weight 0.1 needs eleven turns of the ring to earn one job's credit.
    added = [await queue.add(owner=f"k{i}", weight=0.1) for i in range(15) for _ in range(2)]
    added.append(await queue.add(owner="big", weight=5))
    order = await queue.drain()
    assert sorted(order) == sorted(added)
    assert order.index(added[-1]) < 3  # the heavy key's credit wins early


@pytest.mark.anyio
async def test_a_flood_does_not_delay_another_keys_first_job(queue: Queue) -> None:
    for _ in range(1000):
        await queue.add(owner="flood")
    assert len(await queue.take(3)) == 3
    mine = [await queue.add(owner="small") for _ in range(10)]
    # The flood's owner has at most one job's credit left before "small"'s
    # turn comes, then they alternate.
    order = [j for _ in range(20) for j in await queue.take()]
    assert order.index(mine[0]) <= 1, order[:4]
    assert [j for j in order if j in mine] == mine
    assert Counter(j.split("-")[1] for j in order) == {"flood": 10, "small": 10}


@pytest.mark.anyio
async def test_position_counts_higher_tiers_and_fair_share(queue: Queue) -> None:
    for _ in range(4):
        await queue.add("priority", owner="x")
    a = [await queue.add("default", owner="a") for _ in range(6)]
    b = [await queue.add("default", owner="b") for _ in range(2)]
    # 4 priority jobs, then a[2] is a's 3rd: b's 2 jobs share the turns before it.
    assert await queue.client.position(MODEL, a[2]) == 4 + 3 + 2
    assert await queue.client.position(MODEL, b[0]) == 4 + 1 + 1
    order = await queue.drain()
    assert order.index(b[0]) < 4 + 1 + 1
    assert await queue.client.position(MODEL, a[2]) == 1  # dispatched, not started


@pytest.mark.anyio
async def test_cancel_expire_and_replay_of_waiting_jobs(queue: Queue) -> None:
    gone = await queue.add("flex", owner="a")
    kept = await queue.add("flex", owner="a")
    assert await queue.client.cancel(MODEL, gone) == "cancelled"
    assert await queue.client.position(MODEL, gone) is None
    assert await queue.redis.get(queue.consumer._keys.queued) == b"1"
    # A job whose deadline passes while it waits expires at dispatch, taking no slot.
    short = "short"
    await queue.client.enqueue(MODEL, short, REQ, owner="a", tier="flex", timeout_seconds=0.05)
    await anyio.sleep(0.1)
    assert await queue.drain() == [kept]
    record = await queue.client.record(MODEL, short)
    assert record is not None and record.status == "expired"
    # Every scheduling structure is empty again (no leaked ring member, key or token).
    k = queue.consumer._keys
    for tier in ("priority", "default", "flex"):
        assert await queue.redis.llen(k.ring(tier)) == 0
        assert await queue.redis.zcard(k.age(tier)) == 0
        assert not await queue.redis.exists(k.wait(tier, "a"))
    assert not await queue.redis.exists(k.wake)


@pytest.mark.anyio
async def test_unknown_tier_is_refused(queue: Queue) -> None:
    with pytest.raises(ValueError):
        await queue.client.enqueue(MODEL, "x", REQ, tier="gold")
    assert await queue.redis.get(queue.consumer._keys.queued) is None


@pytest.mark.anyio
async def test_replayed_dead_letter_waits_in_its_tier_again(redis_url: str) -> None:
    redis = await connect(RedisSettings(redis_url=redis_url))
    try:
        q = Queue(redis, QueueSettings(scheduler_aging_seconds=0, job_max_attempts=1))
        await q.consumer.ensure_group()
        job = await q.add("flex", owner="a")
        (entry,) = await q.consumer.read(1, None)
        started = await q.consumer.start(entry)
        assert not isinstance(started, str)
        assert await q.consumer.requeue(entry, started.attempt, error="boom") == "dead"
        ((dead_id, _),) = await q.client.dead(MODEL)
        assert await q.client.replay(MODEL, dead_id) == job
        later = await q.add("default", owner="b")
        assert await q.client.position(MODEL, job) == 2  # behind the default job
        assert await q.drain() == [later, job]
        record = await q.client.record(MODEL, job)
        assert record is not None and record.status == "queued"
        assert (await redis.hget(q.consumer._keys.job(job), "tier")) == b"flex"
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('tiers = ["flex"]', "default_tier default is not in tiers"),
        ('tiers = ["gold"]', "Invalid enum value 'gold'"),
        ("tiers = []", "at least one tier"),
        ("weight = 0", ">= 0.1"),
    ],
)
def test_keys_file_scheduling_fields_are_checked(tmp_path, extra: str, problem: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nname = "k"\nsha256 = "{"0" * 64}"\n{extra}\n')
    with pytest.raises(KeyringError, match=problem):
        load_keys_file(str(path))
    path.write_text(f'[[keys]]\nname = "k"\nsha256 = "{"0" * 64}"\n')
    (key,) = load_keys_file(str(path))
    assert (key.tiers, key.default_tier, key.weight) == (
        ("priority", "default", "flex"),
        "default",
        1.0,
    )


def test_worker_metrics_per_key_and_tier() -> None:
    metrics = WorkerMetrics()
    created = int(time.time() * 1000) - 1500
    metrics.job_started(1, created, "alice", "flex")
    metrics.job_started(2, created, "alice", "flex")  # a retry: its wait counted once
    metrics.job_started(1, created, "", "priority")
    token = job_owner.set("alice")
    try:
        metrics.job_finished("completed", 7, time.monotonic(), None, created)
    finally:
        job_owner.reset(token)
    metrics.job_finished("completed", 3, time.monotonic(), None, created)
    sample = metrics.registry.get_sample_value
    assert sample("streamworker_queue_wait_seconds_count", {"key": "alice", "tier": "flex"}) == 1
    waited = sample("streamworker_queue_wait_seconds_sum", {"key": "alice", "tier": "flex"})
    assert waited is not None and 1.4 < waited < 10
    labels = {"key": "anonymous", "tier": "priority"}
    assert sample("streamworker_queue_wait_seconds_count", labels) == 1
    assert sample("streamworker_key_generation_tokens_total", {"key": "alice"}) == 7
    assert sample("streamworker_key_generation_tokens_total", {"key": "anonymous"}) == 3
