"""Health that tells the truth: /health is liveness only; /ready is 503 when
Redis is down or no worker is alive, and 200 again when they are back; a
worker whose engine died leaves the registry."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from redis.asyncio import Redis

from streamworker.heartbeat import Heartbeat, engine_alive
from streamworker.protocol import keys
from tests.conftest import ECHO
from tests.harness import Gateway, RedisServer, Worker, free_port, wait_for


def ready(gateway: Gateway) -> tuple[int, dict]:
    resp = httpx.get(gateway.url + "/ready", timeout=5)
    return resp.status_code, resp.json()


def worker_health(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code


def test_ready_follows_redis_and_workers(tmp_path: Path, services: list) -> None:
    # A private Redis: this test stops it, and must not disturb the others.
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        gateway = Gateway(server.url, tmp_path / "gw.log")
        services.append(gateway)
        gateway.start()
        assert ready(gateway)[0] == 503  # no worker yet
        assert ready(gateway)[1]["reason"] == "no live worker"

        port = free_port()
        worker = Worker(
            server.url, tmp_path / "w1.log", "w1", WORKER_METRICS_PORT=str(port), **ECHO
        )
        services.append(worker)
        worker.start(redis=server)
        wait_for(lambda: ready(gateway)[0] == 200, what="ready with a worker")
        assert ready(gateway)[1]["models"] == ["echo-test"]
        assert worker_health(port) == 200

        # The last worker dies: not ready (liveness stays green).
        worker.signal(signal.SIGKILL)
        worker.wait(10)
        wait_for(
            lambda: ready(gateway) == (503, {"status": "unavailable", "reason": "no live worker"}),
            what="503 after the last worker died",
        )
        assert httpx.get(gateway.url + "/health", timeout=5).status_code == 200

        worker2 = Worker(
            server.url, tmp_path / "w2.log", "w2", WORKER_METRICS_PORT=str(port), **ECHO
        )
        services.append(worker2)
        worker2.start(redis=server)
        wait_for(lambda: ready(gateway)[0] == 200, what="ready again")

        # Redis stops: not ready, and the worker's own health says why.
        server.kill()
        wait_for(lambda: ready(gateway)[0] == 503, what="503 without redis")
        assert ready(gateway)[1]["reason"].startswith(("redis", "pub/sub"))
        wait_for(lambda: worker_health(port) == 503, what="worker health without redis")
        assert httpx.get(gateway.url + "/health", timeout=5).status_code == 200

        server.start()  # same port, same data dir
        wait_for(lambda: ready(gateway)[0] == 200, timeout=60, what="ready after redis is back")
        wait_for(lambda: worker_health(port) == 200, what="worker healthy again")
    finally:
        for svc in reversed(services):
            svc.stop(timeout=10)
        services.clear()
        server.stop()


class DyingEngine:
    """A TEST DOUBLE of an engine whose decode thread can die."""

    def __init__(self) -> None:
        self.running = True

    def alive(self) -> bool:
        return self.running


def test_a_dead_engine_stops_heartbeating(redis_url: str) -> None:
    async def main() -> None:
        r = Redis.from_url(redis_url)
        engine = DyingEngine()
        heartbeat = Heartbeat(
            r,
            engine,  # type: ignore[arg-type]
            worker_id="wd",
            model="m",
            slots=1,
            active=lambda: 0,
            interval=0.05,
        )
        beats = asyncio.create_task(heartbeat.run())
        async with asyncio.timeout(10):
            while True:  # the first heartbeat landed, and its task saw the reply
                if await r.exists(keys.worker("wd")) and heartbeat.last_beat:
                    break
                await asyncio.sleep(0.01)
        assert heartbeat.health() is None
        engine.running = False
        await asyncio.wait_for(beats, timeout=10)  # the loop ends by itself
        assert not await r.exists(keys.worker("wd"))
        assert await r.zscore(keys.WORKERS, "wd") is None
        assert heartbeat.health() == "engine stopped"
        await r.aclose()

    asyncio.run(main())


def test_batched_engine_reports_its_decode_thread() -> None:
    from streamworker.engines.batched import BatchedEngine
    from streamworker.settings import EngineSettings

    engine = BatchedEngine(EngineSettings(engine="batched", model_n_ctx=256, slots=1))
    assert engine_alive(engine)
    engine.close()  # the decode thread ends, as it would if it crashed
    assert not engine_alive(engine)
