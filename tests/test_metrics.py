"""Every metric the dashboards and alerts read, scraped from the real gateway and
worker, parsed with prometheus_client's parser, and seen to move."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ECHO
from tests.harness import PYTHON, ROOT, free_port, wait_for

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`; a missing
    metric fails (present is part of the contract), a zero does not."""
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert found, f"{name}{labels or ''} not exported"
    return sum(found)


SEED_GATEWAY = [
    "http_requests_total",
    "http_request_duration_seconds_count",
    "proxy_active_jobs",
    "proxy_queued_jobs",
    "proxy_capacity",
    "proxy_rejected_total",
    "gateway_time_to_first_token_seconds_count",
]


def test_gateway_and_worker_metrics_move(start_gateway, start_worker) -> None:
    port = free_port()
    start_worker(
        WORKER_CONCURRENCY="1",
        WORKER_METRICS_PORT=str(port),
        ECHO_TOKEN_INTERVAL_MS="30",
        JOB_MAX_ATTEMPTS="1",
        **ECHO,
    )
    gateway = start_gateway(MAX_QUEUE="2")
    gw_metrics, wk_metrics = gateway.url + "/metrics", f"http://127.0.0.1:{port}/metrics"
    before = scrape(gw_metrics)
    for name in SEED_GATEWAY[1:]:
        value(before, name)  # all present before any job
    assert value(before, "proxy_capacity") == 1  # the cluster's slots, from Redis

    def ask(i: int, stream: bool = False) -> int:
        body = {
            "model": "echo-test",
            # Long enough that the heartbeat (0.5 s) sees the first job running
            # while the others still wait.
            "max_tokens": 60,
            "stream": stream,
            "messages": [{"role": "user", "content": f"m{i}"}],
        }
        with httpx.stream(
            "POST", gateway.url + "/v1/chat/completions", json=body, timeout=60
        ) as resp:
            resp.read()
            return resp.status_code

    with ThreadPoolExecutor(6) as pool:
        first = [pool.submit(ask, 0, True)]
        # The first job runs before the next two arrive, so they fit the queue
        # (MAX_QUEUE=2) however slowly the worker picks the first one up.
        wait_for(lambda: value(scrape(gw_metrics), "proxy_active_jobs") >= 1, what="active")
        first += [pool.submit(ask, 1), pool.submit(ask, 2)]
        # While they run: one active, the rest queued, as the whole cluster sees it.
        wait_for(lambda: value(scrape(gw_metrics), "proxy_queued_jobs") >= 1, what="queued")
        busy = scrape(gw_metrics)
        assert value(busy, "proxy_queued_jobs") >= 1
        assert value(scrape(wk_metrics), "proxy_active_jobs") == 1
        extra = [pool.submit(ask, 10 + i) for i in range(3)]  # past MAX_QUEUE: some 429
        codes = [f.result() for f in first + extra]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    poison = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=60,
        json={"model": "echo-test", "messages": [{"role": "user", "content": "ECHO_FAIL"}]},
    )
    assert poison.status_code >= 500
    httpx.get(gateway.url + "/no/such/path-12345", timeout=5)

    after = scrape(gw_metrics)
    completions = "/v1/chat/completions"
    assert value(after, "http_requests_total", method="POST", endpoint=completions, code="200") >= 3
    assert value(after, "http_requests_total", endpoint=completions, code="429") >= 1
    assert value(after, "proxy_rejected_total") >= 1
    assert value(after, "http_request_duration_seconds_count", endpoint=completions) >= 7
    assert value(after, "gateway_time_to_first_token_seconds_count") >= 1
    # Back to idle (heartbeats carry the active count, so allow them a beat).
    wait_for(lambda: value(scrape(gw_metrics), "proxy_active_jobs") == 0, what="idle")
    assert value(scrape(gw_metrics), "proxy_queued_jobs") == 0
    # Label values stay bounded: route templates, never raw paths.
    assert not any("path-12345" in v for _, lab, _ in after for v in lab.values())

    worker = scrape(wk_metrics)
    assert value(worker, "streamworker_jobs_total", status="completed") >= 3
    assert value(worker, "streamworker_generation_tokens_total") >= 60
    for histogram in (
        "streamworker_time_to_first_token_seconds",
        "streamworker_request_queue_time_seconds",
        "streamworker_e2e_request_latency_seconds",
        "streamworker_inter_token_latency_seconds",
    ):
        assert value(worker, histogram + "_count") >= 3, histogram
    assert value(worker, "streamworker_jobs_dead_lettered_total") >= 1
    assert value(worker, "streamworker_jobs_reclaimed_total") == 0  # present; moved in recovery
    assert value(worker, "proxy_capacity") == 1 and value(worker, "proxy_active_jobs") == 0
    # The metrics port also answers the orchestrator's health check.
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "ok"


def test_inspect_counts_jobs_by_status(start_gateway, start_worker, redis_url: str) -> None:
    start_worker(name="insp", WORKER_CONCURRENCY="2", **ECHO)
    gateway = start_gateway()
    for i in range(3):
        assert (
            httpx.post(
                gateway.url + "/v1/chat/completions",
                timeout=30,
                json={
                    "model": "echo-test",
                    "max_tokens": 2,
                    "messages": [{"role": "user", "content": f"i{i}"}],
                },
            ).status_code
            == 200
        )
    out = subprocess.run(
        [PYTHON, "-m", "streamworker", "inspect"],
        cwd=ROOT,
        timeout=60,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "REDIS_URL": redis_url},
    ).stdout
    assert "job records by status: completed=3" in out
    assert "XINFO STREAM: length=0" in out  # finished entries are acked and deleted
    assert "insp: model=echo-test slots=2" in out
    assert "GPU semaphore sw:gpu:" in out
