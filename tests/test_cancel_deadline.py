"""Client disconnect cancels; queued jobs are skipped; deadlines expire jobs."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.conftest import ECHO, client_for
from tests.harness import wait_for

SLOW = {**ECHO, "ECHO_TOKEN_INTERVAL_MS": "50"}


def job_keys(r):
    return r.keys("sw:{echo-test}:job:*")


def test_disconnect_cancels_and_frees_the_slot(start_gateway, start_worker, r, capsys):
    start_worker(**SLOW)
    gw = start_gateway()
    body = {
        "model": "echo-test",
        "stream": True,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "tick"}],
    }
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=10) as resp:
        for line in resp.iter_lines():
            if '"content":"tick' in line:
                break
    closed_at = time.monotonic()
    (key,) = job_keys(r)
    wait_for(lambda: r.hget(key, "status") == b"cancelled", timeout=10, what="cancelled")
    cancelled_after = time.monotonic() - closed_at
    # The slot is free: a new job starts and completes at once.
    client = client_for(gw, timeout=30)
    out = client.chat.completions.create(
        model="echo-test", max_tokens=2, messages=[{"role": "user", "content": "next"}]
    )
    freed_after = time.monotonic() - closed_at
    assert out.choices[0].message.content == "next next "
    tokens = int(r.hget(key, "completion_tokens"))
    assert tokens < 1000
    with capsys.disabled():
        print(
            f"\n[disconnect -> job cancelled in {cancelled_after * 1000:.0f} ms, "
            f"slot reused in {freed_after * 1000:.0f} ms; {tokens} tokens were generated]"
        )


def test_cancelled_queued_job_never_runs(start_gateway, start_worker, r):
    start_worker(**SLOW)
    gw = start_gateway()
    long = httpx.post(
        gw.url + "/v1/jobs",
        timeout=10,
        json={
            "model": "echo-test",
            "max_tokens": 40,
            "messages": [{"role": "user", "content": "a"}],
        },
    )
    queued = httpx.post(
        gw.url + "/v1/jobs",
        timeout=10,
        json={
            "model": "echo-test",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "b"}],
        },
    )
    qid = queued.json()["id"]
    out = httpx.delete(f"{gw.url}/v1/jobs/{qid}", timeout=10).json()
    assert out["cancel"] == "cancelled" and out["status"] == "cancelled"
    lid = long.json()["id"]
    wait_for(
        lambda: httpx.get(f"{gw.url}/v1/jobs/{lid}").json()["status"] == "completed",
        timeout=20,
        what="first job",
    )
    wait_for(lambda: r.xlen("sw:{echo-test}:jobs") == 0, timeout=10, what="entry skipped")
    record = httpx.get(f"{gw.url}/v1/jobs/{qid}").json()
    assert record["status"] == "cancelled" and record["attempt"] == 0 and record["worker"] is None
    assert int(r.get("sw:{echo-test}:queued")) == 0


def test_deadline_expires_a_queued_job(start_gateway, start_worker, r):
    start_worker(**SLOW)
    gw = start_gateway(SSE_KEEPALIVE_SECONDS="0.2")
    client = client_for(gw, timeout=30)
    blocker = threading.Thread(
        target=lambda: client.chat.completions.create(
            model="echo-test", max_tokens=60, messages=[{"role": "user", "content": "busy"}]
        )
    )
    blocker.start()
    wait_for(lambda: r.xpending("sw:{echo-test}:jobs", "workers")["pending"] == 1, timeout=10)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="echo-test",
            max_tokens=5,
            extra_body={"timeout": 1},
            messages=[{"role": "user", "content": "late"}],
        )
    assert info.value.status_code == 504
    assert info.value.body["code"] == "timeout"
    blocker.join(30)
    late = [k for k in job_keys(r) if b"late" in r.hget(k, "request")]
    assert r.hget(late[0], "status") == b"expired"
    assert r.hget(late[0], "attempt") == b"0", "a worker must never start an expired job"


def test_deadline_stops_a_running_job(start_gateway, start_worker, r):
    start_worker(**SLOW)
    gw = start_gateway()
    client = client_for(gw, timeout=30)
    stream = client.chat.completions.create(
        model="echo-test",
        max_tokens=500,
        stream=True,
        extra_body={"timeout": 1},
        messages=[{"role": "user", "content": "long"}],
    )
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "deadline" in str(info.value.message)
    (key,) = job_keys(r)
    assert r.hget(key, "status") == b"expired"
