"""SIGKILL redis-server (AOF, appendfsync everysec, the project's redis.conf)
and restart it: accepted jobs complete, gateway and worker recover in place."""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import ECHO, client_for
from tests.harness import wait_for
from tests.test_recovery import expected_echo, stream_text


def test_redis_sigkill_and_restart(redis_server, start_gateway, start_worker, r):
    env = {
        **ECHO,
        "ECHO_TOKEN_INTERVAL_MS": "20",
        "WORKER_CONCURRENCY": "2",
        "JOB_LEASE_SECONDS": "2",
    }
    worker = start_worker(name="survivor", **env)
    gw = start_gateway(JOB_LEASE_SECONDS="2", SSE_KEEPALIVE_SECONDS="0.5")
    client = client_for(gw, timeout=120)
    streamed: list[str] = []
    t = threading.Thread(target=lambda: streamed.append(stream_text(client, "live wire", 200)))
    t.start()
    ids = []
    for i in range(5):
        resp = httpx.post(
            gw.url + "/v1/jobs",
            timeout=10,
            json={
                "model": "echo-test",
                "max_tokens": 60,
                "messages": [{"role": "user", "content": f"job{i} word"}],
            },
        )
        assert resp.status_code == 202
        ids.append(resp.json()["id"])
    time.sleep(1.5)  # accepted well over a second before the crash
    redis_server.kill()
    time.sleep(1.0)
    assert httpx.get(gw.url + "/ready", timeout=10).status_code == 503
    redis_server.start()  # same port and dir: the AOF is replayed
    t.join(90)
    assert streamed == [expected_echo("live wire", 200)]
    for i, job_id in enumerate(ids):
        job = wait_for(
            lambda jid=job_id: (
                (j := httpx.get(f"{gw.url}/v1/jobs/{jid}", timeout=5).json()).get("status")
                == "completed"
                and j
            ),
            timeout=60,
            what=f"job {i}",
        )
        assert job["result"]["text"] == expected_echo(f"job{i} word", 60)
    assert worker.alive() and gw.alive(), "no restart of gateway or worker was needed"
    wait_for(
        lambda: httpx.get(gw.url + "/ready", timeout=5).status_code == 200,
        timeout=20,
        what="ready again",
    )
    assert r.xpending("sw:{echo-test}:jobs", "workers")["pending"] == 0


def test_full_redis_memory_is_a_clear_503(echo_stack, r):
    """noeviction: when Redis is out of memory the enqueue is refused whole
    and the client gets 503 queue_out_of_memory, not a 500 or a lost job."""
    gw, _ = echo_stack
    body = {"model": "echo-test", "max_tokens": 2, "messages": [{"role": "user", "content": "m"}]}
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    before = len(r.keys("sw:{echo-test}:job:*"))
    r.config_set("maxmemory", "1")
    try:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
    finally:
        r.config_set("maxmemory", "512mb")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "queue_out_of_memory"
    assert "retry-after" in resp.headers
    assert len(r.keys("sw:{echo-test}:job:*")) == before
    assert r.xlen("sw:{echo-test}:jobs") == 0
    ok = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
    assert ok.status_code == 200
