"""Fixtures: one private redis-server per session (flushed per test), and
factories for gateways and workers as real child processes.

`pytest --redis-cluster` (or SW_TEST_REDIS_CLUSTER=1) runs the same tests on
a local Redis Cluster (three masters, three replicas) instead: the gateways
and workers find out from the node that it is one. `-m cluster_core` picks
the core subset CI runs on the cluster as well."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from openai import OpenAI

from tests.harness import Gateway, RedisClusterServer, RedisServer, Worker

ECHO = {"ENGINE": "echo", "MODEL_NAME": "echo-test"}

# The core subset that also runs on a Redis Cluster: the echo chat end to
# end, the jobs API, crash recovery, backpressure, and the cluster's own tests.
CLUSTER_CORE = {
    "test_smoke_echo.py",
    "test_jobs_api.py",
    "test_recovery.py",
    "test_backpressure.py",
    "test_cluster.py",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get("SW_TEST_REDIS_CLUSTER", "") not in ("", "0"),
        help="run the process tests on a local Redis Cluster instead of one redis-server",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster_core: the core subset that CI also runs with --redis-cluster"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in CLUSTER_CORE:
            item.add_marker(pytest.mark.cluster_core)


@pytest.fixture(scope="session")
def on_cluster(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--redis-cluster"))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A private Redis Cluster (for the cluster's own tests, in every run)."""
    cluster = RedisClusterServer(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory, on_cluster: bool, request: pytest.FixtureRequest
) -> Iterator[RedisServer | RedisClusterServer]:
    if on_cluster:
        yield request.getfixturevalue("redis_cluster")
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer | RedisClusterServer) -> Iterator[str]:
    if not redis_server.ping():  # a test killed it: bring it back
        redis_server.start()
    redis_server.flush()
    yield redis_server.url


@pytest.fixture
def r(redis_url: str, on_cluster: bool) -> Iterator[redis_sync.Redis]:
    if on_cluster:
        client: redis_sync.Redis = redis_sync.RedisCluster.from_url(redis_url)  # type: ignore[assignment]
    else:
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
