"""kill -9 of the Redis Cluster master that owns a model's slot: its replica
takes over (cluster-node-timeout 1 s), the gateway and the worker follow the
slot to it, and clients see a pause, not an error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from streamworker.protocol import keys
from tests.conftest import ECHO, client_for
from tests.harness import Gateway, RedisClusterServer, Worker, wait_for
from tests.test_recovery import expected_echo, stream_text

MODEL_TAG = keys.tag(ECHO["MODEL_NAME"])


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> Iterator[RedisClusterServer]:
    if not redis_cluster.healthy():
        redis_cluster.start()
    redis_cluster.flush()
    yield redis_cluster
    # Bring back whatever a test killed, so the next one starts whole.
    for node in redis_cluster.nodes:
        if node.proc is None:
            redis_cluster.start_node(node)
    wait_for(redis_cluster.healthy, timeout=60, what="cluster healed")


@pytest.fixture
def stack(
    cluster: RedisClusterServer, tmp_path: Path, services: list
) -> Callable[..., tuple[Gateway, Worker]]:
    def start(**env: str) -> tuple[Gateway, Worker]:
        worker = Worker(
            cluster.url,
            tmp_path / "worker.log",
            "wf",
            **ECHO,
            ECHO_TOKEN_INTERVAL_MS="20",
            WORKER_CONCURRENCY="4",
            JOB_LEASE_SECONDS="2",
            **env,
        )
        services.append(worker)
        worker.start(redis=cluster)
        gw = Gateway(
            cluster.url,
            tmp_path / "gateway.log",
            JOB_LEASE_SECONDS="2",
            SSE_KEEPALIVE_SECONDS="0.5",
            **env,
        )
        services.append(gw)
        gw.start()
        return gw, worker

    return start


def ready(gw: Gateway) -> int:
    return httpx.get(gw.url + "/ready", timeout=5).status_code


def test_killing_the_models_master_mid_stream(cluster: RedisClusterServer, stack) -> None:
    gw, worker = stack()
    owner = cluster.owner(MODEL_TAG)
    client = client_for(gw, timeout=120)
    words = [f"stream{i} word" for i in range(4)]
    streamed: dict[int, str] = {}

    def run(i: int) -> None:
        streamed[i] = stream_text(client, words[i], 150)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every stream is under way (150 tokens take 3 s)
    cluster.kill(owner)
    wait_for(lambda: ready(gw) == 503, timeout=5, interval=0.05, what="/ready reports the outage")
    for t in threads:
        t.join(90)
    # No duplicate and no gap: each stream is its exact echo.
    assert streamed == {i: expected_echo(words[i], 150) for i in range(4)}
    assert cluster.owner(MODEL_TAG) != owner, "a replica took the slot over"
    wait_for(lambda: ready(gw) == 200, timeout=20, what="/ready recovers")
    assert worker.alive() and gw.alive(), "neither needed a restart"


def submit_while_killing(gw: Gateway, cluster: RedisClusterServer, owner: int) -> list[str]:
    """POST /v1/jobs as fast as one client can while the owner is killed;
    the ids of the jobs that got a 2xx before the kill."""
    accepted: list[str] = []
    killed = threading.Event()
    body = {"model": "echo-test", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}

    def submit() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            while not killed.is_set():
                resp = http.post("/v1/jobs", json=body)
                if resp.status_code == 202 and not killed.is_set():
                    accepted.append(resp.json()["id"])

    t = threading.Thread(target=submit)
    t.start()
    time.sleep(0.5)
    cluster.kill(owner)
    killed.set()
    t.join(30)
    return accepted


def lost_jobs(gw: Gateway, ids: list[str]) -> list[str]:
    """Accepted jobs the cluster no longer knows (404), once it answers again."""
    wait_for(lambda: ready(gw) == 200, timeout=30, what="ready after the failover")
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        return [i for i in ids if http.get(f"/v1/jobs/{i}").status_code == 404]


def test_wait_replicas_keeps_every_accepted_job(cluster: RedisClusterServer, stack) -> None:
    """REDIS_WAIT_REPLICAS=1: a 2xx means the owner's replica has the job, so
    the replica that takes over has it too."""
    gw, _ = stack(REDIS_WAIT_REPLICAS="1")
    owner = cluster.owner(MODEL_TAG)
    accepted = submit_while_killing(gw, cluster, owner)
    assert len(accepted) > 10
    assert lost_jobs(gw, accepted) == []
