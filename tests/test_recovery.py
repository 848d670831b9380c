"""Jobs survive crashes: kill -9 workers mid-stream, reclaim, leases, fencing."""

from __future__ import annotations

import random
import signal
import threading
import time

import anyio
import pytest

from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import connect
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings, RedisSettings
from streamworker.protocol.wire import End, GenerationParams, JobRequest, LogEntry, Message
from tests.conftest import ECHO, client_for
from tests.harness import wait_for

STREAM = "sw:{echo-test}:jobs"
FAST_LEASE = {"JOB_LEASE_SECONDS": "1"}


def expected_echo(words: str, n: int) -> str:
    w = words.split()
    return "".join(w[i % len(w)] + " " for i in range(n))


def stream_text(client, content: str, max_tokens: int, **kw) -> str:
    stream = client.chat.completions.create(
        model=kw.pop("model", "echo-test"),
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        stream=True,
        **kw,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def owner_of(r, job_prefix: str | None = None) -> set[str]:
    return {p["consumer"].decode() for p in r.xpending_range(STREAM, "workers", "-", "+", 100)}


def test_kill9_workers_mid_stream_many_times(start_gateway, start_worker, r):
    """Random SIGKILLs of the workers running the jobs, with restarts (a
    restarted worker recovers its own entries) and without (the survivor
    reclaims them after the lease): every client gets the exact text."""
    # Every kill of a running job counts as a failure; this test is about
    # recovery, not the dead-letter cap, so the cap is out of reach.
    env = {
        **ECHO,
        **FAST_LEASE,
        "ECHO_TOKEN_INTERVAL_MS": "15",
        "WORKER_CONCURRENCY": "3",
        "JOB_MAX_ATTEMPTS": "100",
    }
    workers = {name: start_worker(name=name, **env) for name in ("wa", "wb")}
    gateway = start_gateway(**FAST_LEASE)
    client = client_for(gateway, timeout=120)
    rng = random.Random(7)
    prompts = [f"alpha{i} beta{i} gamma{i}" for i in range(6)]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = stream_text(client, prompts[i], 160)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    kills = 0
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline and kills < 6:
        time.sleep(rng.uniform(0.3, 0.9))
        owners = owner_of(r) & set(workers)
        if not owners:
            continue
        victim = rng.choice(sorted(owners))
        workers[victim].kill()
        kills += 1
        if rng.random() < 0.5:  # restart at once: it finds its own pending entries
            workers[victim] = start_worker(name=victim, **env)
        else:  # stay dead for a lease: the other worker reclaims
            time.sleep(1.5)
            workers[victim] = start_worker(name=victim, **env)
    for t in threads:
        t.join(90)
    assert kills >= 3, "the test should have killed workers mid-stream"
    for i, prompt in enumerate(prompts):
        assert results.get(i) == expected_echo(prompt, 160), f"stream {i} differs"
    wait_for(
        lambda: r.xpending(STREAM, "workers")["pending"] == 0, timeout=10, what="empty pending list"
    )
    reclaimed = [k for k in r.keys("sw:{echo-test}:job:*") if int(r.hget(k, "attempt")) > 1]
    assert reclaimed, "some jobs should have been re-run after a kill"
    for key in r.keys("sw:{echo-test}:job:*"):
        assert r.hget(key, "status") == b"completed"


def test_kill9_real_model_continues_identically(start_gateway, start_worker, r):
    """Temperature 0 on the default worker (the batched engine, its answers
    independent of the load): the text a client sees through a crash equals
    the uninterrupted run's."""
    env = {**FAST_LEASE, "BATCH_INVARIANT": "true"}
    workers = {n: start_worker(name=n, **env) for n in ("m1", "m2")}
    gateway = start_gateway(**FAST_LEASE)
    client = client_for(gateway, timeout=120)
    prompt = "Write a long story about a lighthouse keeper."
    reference = stream_text(client, prompt, 96, model="gemma-3-270m", temperature=0)
    stream = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=96,
        temperature=0,
        stream=True,
    )
    parts: list[str] = []
    killed = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if killed is None and len(parts) >= 10:
            owners = {
                p["consumer"].decode()
                for p in r.xpending_range("sw:{gemma-3-270m}:jobs", "workers", "-", "+", 10)
            }
            if owners:
                killed = owners.pop()
                workers[killed].kill()
    assert killed is not None, "the job finished before it could be killed"
    assert "".join(parts) == reference
    jobs = [k for k in r.keys("sw:{gemma-3-270m}:job:*") if r.hget(k, "attempt") == b"2"]
    assert len(jobs) == 1, "the interrupted job should have run a second attempt"


def test_long_job_is_not_stolen(start_gateway, start_worker, r):
    """A job running 5x its lease completes once: its owner renews the lease."""
    env = {**ECHO, **FAST_LEASE, "ECHO_TOKEN_INTERVAL_MS": "100"}
    start_worker(name="slow-a", **env)
    start_worker(name="slow-b", **env)
    gateway = start_gateway(**FAST_LEASE)
    client = client_for(gateway, timeout=60)
    t0 = time.monotonic()
    text = stream_text(client, "steady", 50)
    assert time.monotonic() - t0 >= 5.0
    assert text == expected_echo("steady", 50)
    (key,) = r.keys("sw:{echo-test}:job:*")
    assert r.hget(key, "attempt") == b"1"
    assert r.hget(key, "failures") == b"0"


@pytest.mark.anyio
async def test_stale_worker_result_is_refused(redis_url):
    """Worker A stalls past its lease; B reclaims (attempt 2). A's late tokens,
    lease refresh and result are all refused; B's are accepted."""
    # Through the one connection module: a RedisCluster under --redis-cluster.
    redis = await connect(RedisSettings(redis_url=redis_url))
    settings = QueueSettings(job_lease_seconds=0.2)
    scripts = Scripts(redis)
    client = JobClient(redis, scripts, settings)
    a = JobConsumer(redis, scripts, settings, model="m", name="A")
    b = JobConsumer(redis, scripts, settings, model="m", name="B")
    try:
        await a.ensure_group()
        req = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=4))
        job_id, _ = await client.enqueue("m", "job-1", req)
        (entry,) = await a.read(1, None)
        started_a = await a.start(entry)
        assert started_a.attempt == 1
        assert await a.append(job_id, 1, 0, [LogEntry(5, "x ")]) == "ok"
        await anyio.sleep(0.3)  # A stalls past its lease
        (taken,) = await b.reclaim(1)
        started_b = await b.start(taken)
        assert started_b.attempt == 2
        assert [e.text for e in started_b.logged] == ["x "]  # B resumes after A's prefix
        assert await a.append(job_id, 1, 1, [LogEntry(6, "late ")]) == "stale"
        assert await a.refresh([entry.entry_id]) == {entry.entry_id}
        end = End(status="completed")
        assert not await a.finish(entry, 1, end, {"text": "stale"})
        assert await b.append(job_id, 2, 1, [LogEntry(6, "y ")]) == "ok"
        assert await b.finish(taken, 2, end, {"text": "x y "})
        record = await client.record("m", job_id)
        assert record.status == "completed" and record.text == "x y "
        assert [e.text for e in await client.log("m", job_id)] == ["x ", "y "]
        assert (await redis.xpending("sw:{m}:jobs", "workers"))["pending"] == 0
    finally:
        await redis.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_worker_restart_recovers_own_pending(start_gateway, start_worker, r):
    """A worker killed and restarted under the same
    name takes its own pending job back at once, not after a lease."""
    env = {**ECHO, "JOB_LEASE_SECONDS": "30", "ECHO_TOKEN_INTERVAL_MS": "20"}
    worker = start_worker(name="solo", **env)
    gateway = start_gateway()
    client = client_for(gateway, timeout=60)
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(stream_text(client, "p q", 100)))
    t.start()
    wait_for(lambda: owner_of(r) == {"solo"}, timeout=10, what="job running")
    time.sleep(0.5)
    worker.signal(signal.SIGKILL)
    worker.wait(5)
    t0 = time.monotonic()
    start_worker(name="solo", **env)
    t.join(40)
    assert result == [expected_echo("p q", 100)]
    assert time.monotonic() - t0 < 20  # well inside the 30 s lease
