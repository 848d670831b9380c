"""Backpressure: a burst far above capacity gets 429 + Retry-After at once
for what does not fit, the queue never grows past MAX_QUEUE, and everything
accepted completes. Plus the opt-in queue position while waiting."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis as redis_sync

from streamworker.protocol import keys
from tests.conftest import ECHO

SLOW = {**ECHO, "ECHO_TOKEN_INTERVAL_MS": "50"}


def test_burst_of_ten_times_capacity(start_gateway, start_worker, r: redis_sync.Redis) -> None:
    start_worker(WORKER_CONCURRENCY="2", **SLOW)
    gateway = start_gateway(MAX_QUEUE="4")
    queued_key = keys.ModelKeys("echo-test").queued
    deepest = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal deepest
        while not stop.is_set():
            deepest = max(deepest, int(r.get(queued_key) or 0))
            stop.wait(0.005)

    def ask(i: int) -> tuple[httpx.Response, float]:
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            timeout=120,
            json={
                "model": "echo-test",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"burst{i}"}],
            },
        )
        return response, time.monotonic()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(ask, range(20)))  # capacity 2: a burst of 10x
    finally:
        stop.set()
        sampler.join()

    accepted = [(i, resp, t) for i, (resp, t) in enumerate(results) if resp.status_code == 200]
    rejected = [(resp, t) for resp, t in results if resp.status_code == 429]
    assert len(accepted) + len(rejected) == 20, [resp.status_code for resp, _ in results]
    assert len(accepted) >= 4 and rejected  # the queue bound admits at least MAX_QUEUE
    for i, resp, _ in accepted:
        assert resp.json()["choices"][0]["message"]["content"] == f"burst{i} " * 8
    for resp, _ in rejected:
        assert int(resp.headers["Retry-After"]) >= 1
        error = resp.json()["error"]
        assert error["type"] and error["code"] and "full" in error["message"]
    assert deepest <= 4  # never past MAX_QUEUE, even in a concurrent burst
    # Refused at once, not after waiting: every 429 came back before the
    # last accepted job finished.
    assert max(t for _, t in rejected) < max(t for _, _, t in accepted)


def test_queue_position_while_waiting(start_gateway, start_worker) -> None:
    start_worker(WORKER_CONCURRENCY="1", **SLOW)
    gateway = start_gateway(SSE_KEEPALIVE_SECONDS="0.2")
    body = {
        "model": "echo-test",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "waiting"}],
    }

    def busy(i: int) -> int:
        return httpx.post(
            gateway.url + "/v1/chat/completions",
            timeout=60,
            json={
                **body,
                "stream": False,
                "messages": [{"role": "user", "content": f"ahead{i}"}],
            },
        ).status_code

    with ThreadPoolExecutor(3) as pool:
        ahead = [pool.submit(busy, i) for i in range(3)]
        time.sleep(0.3)  # let them enqueue first (ordering, not a threshold)
        positions: list[int] = []
        text = ""
        with httpx.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json=body,
            timeout=60,
            headers={"X-Queue-Position": "true"},
        ) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith(": queue-position "):
                    positions.append(int(line.split()[-1]))
                elif line.startswith("data: {") and '"content":"w' in line:
                    text += line
        assert [f.result() for f in ahead] == [200, 200, 200]
    assert positions and positions[0] >= 1
    assert positions == sorted(positions, reverse=True)  # it only moves forward
    assert text  # and then the job ran


def test_no_position_unless_asked(echo_stack) -> None:
    gateway, _ = echo_stack
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        timeout=30,
        json={
            "model": "echo-test",
            "max_tokens": 3,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
    ) as resp:
        lines = list(resp.iter_lines())
    assert not any(line.startswith(": queue-position") for line in lines)
    assert "data: [DONE]" in lines
