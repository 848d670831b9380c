"""The async jobs API: 202 + id, status, SSE events with Last-Event-ID resume,
cancel, and Idempotency-Key."""

from __future__ import annotations

import json

import httpx

from tests.conftest import ECHO, client_for
from tests.harness import wait_for

BODY = {
    "model": "echo-test",
    "messages": [{"role": "user", "content": "red green blue"}],
    "max_tokens": 30,
}


def sse_events(resp: httpx.Response, limit: int | None = None) -> list[dict]:
    events, current = [], {}
    for line in resp.iter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
                if limit is not None and len(events) >= limit:
                    break
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        current[field] = value
    return events


def test_create_get_and_events(start_gateway, start_worker):
    start_worker(ECHO_TOKEN_INTERVAL_MS="20", **ECHO)
    gw = start_gateway()
    created = httpx.post(gw.url + "/v1/jobs", json=BODY, timeout=10)
    assert created.status_code == 202
    job = created.json()
    assert job["status"] in ("queued", "running") and job["id"].startswith("chatcmpl-")
    assert created.headers["Location"] == f"/v1/jobs/{job['id']}"
    # Read a few token events, drop the connection, resume with Last-Event-ID.
    with httpx.stream("GET", f"{gw.url}/v1/jobs/{job['id']}/events", timeout=30) as resp:
        first = [e for e in sse_events(resp, limit=6) if e.get("event") == "token"]
    assert first
    last_id = first[-1]["id"]
    with httpx.stream(
        "GET",
        f"{gw.url}/v1/jobs/{job['id']}/events",
        timeout=30,
        headers={"Last-Event-ID": last_id},
    ) as resp:
        rest = sse_events(resp)
    tokens = first + [e for e in rest if e.get("event") == "token"]
    seqs = [json.loads(e["data"])["seq"] for e in tokens]
    assert seqs == sorted(set(seqs)), "no event may repeat after a resume"
    text = "".join(json.loads(e["data"])["text"] for e in tokens)
    assert text == ("red green blue " * 10)
    assert rest[-1]["event"] == "end"
    assert json.loads(rest[-1]["data"])["status"] == "completed"
    done = httpx.get(f"{gw.url}/v1/jobs/{job['id']}", timeout=10).json()
    assert done["status"] == "completed" and done["attempt"] == 1
    assert done["result"]["text"] == text
    assert done["usage"]["completion_tokens"] == 30
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    # A finished job's events replay in full, then end.
    with httpx.stream("GET", f"{gw.url}/v1/jobs/{job['id']}/events", timeout=10) as resp:
        replay = sse_events(resp)
    assert (
        "".join(json.loads(e["data"])["text"] for e in replay if e.get("event") == "token") == text
    )


def test_unknown_job_is_404(echo_stack):
    gw, _ = echo_stack
    resp = httpx.get(gw.url + "/v1/jobs/chatcmpl-nope", timeout=5)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "job_not_found"
    assert httpx.delete(gw.url + "/v1/jobs/chatcmpl-nope", timeout=5).status_code == 404


def test_idempotency_key_returns_the_same_job(echo_stack, r):
    gw, _ = echo_stack
    headers = {"Idempotency-Key": "order-42"}
    a = httpx.post(gw.url + "/v1/jobs", json=BODY, headers=headers, timeout=10)
    b = httpx.post(gw.url + "/v1/jobs", json=BODY, headers=headers, timeout=10)
    assert a.status_code == 202 and b.status_code == 200
    assert a.json()["id"] == b.json()["id"]
    # Through chat completions too: the retried request relays the first job.
    client = client_for(gw)
    first = client.chat.completions.with_raw_response.create(
        model="echo-test",
        messages=[{"role": "user", "content": "once"}],
        max_tokens=3,
        extra_headers={"Idempotency-Key": "chat-7"},
    )
    again = client.chat.completions.with_raw_response.create(
        model="echo-test",
        messages=[{"role": "user", "content": "once"}],
        max_tokens=3,
        extra_headers={"Idempotency-Key": "chat-7"},
    )
    assert first.headers["x-job-id"] == again.headers["x-job-id"]
    assert again.parse().choices[0].message.content == "once once once "
    assert len(r.keys("sw:{echo-test}:job:*")) == 2


def test_delete_cancels_running_job(start_gateway, start_worker):
    start_worker(ECHO_TOKEN_INTERVAL_MS="50", **ECHO)
    gw = start_gateway()
    job = httpx.post(gw.url + "/v1/jobs", json={**BODY, "max_tokens": 500}, timeout=10).json()
    wait_for(
        lambda: httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json()["status"] == "running",
        timeout=10,
        what="running",
    )
    out = httpx.delete(f"{gw.url}/v1/jobs/{job['id']}", timeout=10).json()
    assert out["cancel"] == "cancelling"
    final = wait_for(
        lambda: (
            (j := httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json())["status"] == "cancelled" and j
        ),
        timeout=10,
        what="cancelled",
    )
    assert final["result"] is None


def test_finished_records_expire(start_gateway, start_worker, r):
    start_worker(JOB_RESULT_TTL_SECONDS="1", **ECHO)
    gw = start_gateway()
    job = httpx.post(gw.url + "/v1/jobs", json=BODY, timeout=10).json()
    wait_for(
        lambda: httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json()["status"] == "completed",
        timeout=10,
        what="completed",
    )
    key = f"sw:{{echo-test}}:job:{job['id']}"
    assert 0 < r.pttl(key) <= 1000
    assert 0 < r.pttl(f"sw:{{echo-test}}:log:{job['id']}") <= 1000
    wait_for(lambda: not r.exists(key), timeout=5, what="record expiry")
    assert httpx.get(f"{gw.url}/v1/jobs/{job['id']}", timeout=5).status_code == 404
