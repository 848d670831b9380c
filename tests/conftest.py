"""Fixtures: one private redis-server per session (flushed per test), and
factories for gateways and workers as real child processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from openai import OpenAI

from tests.harness import Gateway, RedisServer, Worker

ECHO = {"ENGINE": "echo", "MODEL_NAME": "echo-test"}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    if not redis_server.ping():  # a test killed it: bring it back
        redis_server.start()
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list]:
    started: list = []
    yield started
    for svc in reversed(started):
        svc.stop(timeout=10)


@pytest.fixture
def start_gateway(redis_url: str, tmp_path: Path, services: list) -> Callable[..., Gateway]:
    def start(**env: str) -> Gateway:
        gw = Gateway(redis_url, tmp_path / f"gateway-{len(services)}.log", **env)
        services.append(gw)
        return gw.start()

    return start


@pytest.fixture
def start_worker(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, services: list
) -> Callable[..., Worker]:
    def start(name: str | None = None, wait: bool = True, **env: str) -> Worker:
        name = name or f"w{len(services)}"
        w = Worker(redis_url, tmp_path / f"worker-{name}.log", name, **env)
        services.append(w)
        return w.start(wait_registered=wait, redis=redis_server)

    return start


@pytest.fixture
def echo_stack(start_gateway, start_worker) -> tuple[Gateway, Worker]:
    """A gateway and one echo-engine worker (the test double)."""
    worker = start_worker(**ECHO)
    gateway = start_gateway()
    return gateway, worker


def client_for(gateway: Gateway, **kw: object) -> OpenAI:
    return OpenAI(
        base_url=gateway.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw
    )  # type: ignore[arg-type]
