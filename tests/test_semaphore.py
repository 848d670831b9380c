"""The GPU semaphore: shared by worker processes, never over its slots, and a
killed holder's slots come back after the lease."""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import redis as redis_sync
from redis.asyncio import Redis

from streamworker.protocol import keys
from streamworker.semaphore import GpuSemaphore, holders
from tests.conftest import ECHO, client_for
from tests.harness import wait_for


async def _poll_grant(sem: GpuSemaphore, n: int) -> int:
    """Ask until the semaphore grants n slots (the lease must run out first)."""
    async with asyncio.timeout(20):
        while True:
            async with sem.grant(n) as g:
                if len(g) == n:
                    return len(g)
            await asyncio.sleep(0.05)


def test_grant_release_and_lease_expiry(redis_url: str) -> None:
    async def main() -> None:
        r = Redis.from_url(redis_url)
        a = GpuSemaphore(r, "gpu-x", 2, owner="a", lease_seconds=0.5)
        b = GpuSemaphore(r, "gpu-x", 2, owner="b", lease_seconds=0.5)
        async with a.grant(3) as g:
            assert len(g) == 2  # never more than the limit
            g.assign("entry-1")  # one runs a job; the other goes back on exit
        async with b.grant(2) as g:
            assert len(g) == 1
        await a.release("entry-1")
        async with b.grant(2) as g:
            assert len(g) == 2
            g.assign("x")
            g.assign("y")
        async with a.grant(1) as g:
            assert len(g) == 0  # b holds both
        # b renews: its slots stay taken for several leases.
        for _ in range(4):
            await asyncio.sleep(0.25)
            assert await b.renew() == 0
            async with a.grant(1) as g:
                assert len(g) == 0
        # b stops renewing (as a killed process would): the lease frees them.
        assert await _poll_grant(a, 2) == 2
        assert len(await holders(r, "gpu-x")) == 0  # given back on exit
        await r.aclose()

    asyncio.run(main())


def test_a_restarted_worker_takes_back_its_own_slots(redis_url: str) -> None:
    async def main() -> None:
        r = Redis.from_url(redis_url)
        old = GpuSemaphore(r, "gpu-y", 2, owner="host-0", lease_seconds=60)
        other = GpuSemaphore(r, "gpu-y", 2, owner="host-0x", lease_seconds=60)
        async with old.grant(1) as g:
            g.assign("e1")  # then the process is killed: no release, no renewal
        async with other.grant(1) as g:
            g.assign("e2")
        # The same worker name restarted: its previous life's slot is freed
        # at once, not after the 60 s lease; another worker's is untouched.
        new = GpuSemaphore(r, "gpu-y", 2, owner="host-0", lease_seconds=60)
        async with new.grant(2) as g:
            assert len(g) == 1
        assert [t for t, _ in await holders(r, "gpu-y")] == [other.by_entry["e2"]]
        await r.aclose()

    asyncio.run(main())


def _sample(
    r: redis_sync.Redis, stream: str, sem_key: str, stop: threading.Event, seen: dict[str, int]
) -> None:
    """Largest number of running entries and held slots seen."""
    while not stop.is_set():
        pending = r.xpending(stream, keys.GROUP)["pending"] if r.exists(stream) else 0
        seen["pending"] = max(seen["pending"], pending)
        seen["held"] = max(seen["held"], r.zcard(sem_key))
        stop.wait(0.01)


def test_two_processes_share_slots_and_a_killed_one_gives_them_back(
    start_gateway, start_worker, r: redis_sync.Redis
) -> None:
    shared = {
        **ECHO,
        "WORKER_CONCURRENCY": "2",
        "WORKER_SEMAPHORE_KEY": "shared-gpu",
        "WORKER_SEMAPHORE_LEASE_SECONDS": "2",
        "JOB_LEASE_SECONDS": "2",
        "ECHO_TOKEN_INTERVAL_MS": "40",
    }
    a = start_worker(name="a", **shared)
    start_worker(name="b", **shared)
    gateway = start_gateway(JOB_LEASE_SECONDS="2")
    client = client_for(gateway, timeout=120)
    sem_key = keys.semaphore("shared-gpu")
    stream = keys.ModelKeys("echo-test").stream

    def ask(i: int, tokens: int) -> str:
        out = client.chat.completions.create(
            model="echo-test", messages=[{"role": "user", "content": f"job{i}"}], max_tokens=tokens
        )
        return out.choices[0].message.content or ""

    seen = {"pending": 0, "held": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(r, stream, sem_key, stop, seen))
    sampler.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: ask(i, 10), range(8)))
        assert answers == [f"job{i} " * 10 for i in range(8)]
        assert 1 <= seen["pending"] <= 2  # 4 slots between them, 2 on the GPU
        assert seen["held"] <= 2

        # Kill -9 a worker that holds slots: they stay taken until the lease
        # runs out, then the other process gets them and finishes every job.
        with ThreadPoolExecutor(4) as pool:
            # Long jobs (6 s each), so worker a is surely mid-job when killed.
            futures = [pool.submit(ask, 100 + i, 150) for i in range(4)]
            wait_for(
                lambda: any(m.startswith(b"a:") for m in r.zrange(sem_key, 0, -1)),
                timeout=30,
                what="worker a to hold a slot",
            )
            a.signal(signal.SIGKILL)
            a.wait(10)
            assert any(m.startswith(b"a:") for m in r.zrange(sem_key, 0, -1))
            wait_for(
                lambda: not any(m.startswith(b"a:") for m in r.zrange(sem_key, 0, -1)),
                timeout=30,
                what="the dead worker's slots to expire",
            )
            assert [f.result() for f in futures] == [f"job{100 + i} " * 150 for i in range(4)]
        # (Entries of the dead worker stay pending until reclaimed, so only the
        # slots, not the pending count, are bounded across the kill.)
        assert seen["held"] <= 2
    finally:
        stop.set()
        sampler.join()
