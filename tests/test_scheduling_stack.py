"""Scheduling through the real gateway and real worker processes (the echo
double): `service_tier` per key, start order across tiers, the echo in
responses and stream chunks, per-key queue metrics, and crash recovery of a
dispatched flex job."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ECHO, client_for
from tests.harness import wait_for

ALICE, BOB = "sk-sched-alice-1", "sk-sched-bob-2"
MODEL = "echo-test"


def keys_file(tmp_path: Path) -> str:
    """alice may use default and flex (flex when she asks for none); bob may
    use every tier."""
    path = tmp_path / "keys.toml"
    path.write_text(
        f"""
[[keys]]
name = "alice"
sha256 = "{hashlib.sha256(ALICE.encode()).hexdigest()}"
tiers = ["default", "flex"]
default_tier = "flex"
weight = 2

[[keys]]
name = "bob"
sha256 = "{hashlib.sha256(BOB.encode()).hexdigest()}"
"""
    )
    return str(path)


def body(text: str, max_tokens: int, **extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


def submit(gw_url: str, key: str, text: str, max_tokens: int, **extra: object) -> str:
    resp = httpx.post(
        gw_url + "/v1/jobs",
        json=body(text, max_tokens, **extra),
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def record(r, job_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    raw = r.hgetall(f"sw:{{{MODEL}}}:job:{job_id}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_tiers_per_key_order_echo_and_metrics(start_gateway, start_worker, r, tmp_path) -> None:
    # One slot, so the order in which jobs start is the scheduler's choice.
    start_worker(ECHO_TOKEN_INTERVAL_MS="20", WORKER_CONCURRENCY="1", **ECHO)
    gw = start_gateway(OPENAI_API_KEY_REQUIRED="true", API_KEYS_FILE=keys_file(tmp_path))
    alice = client_for(gw, api_key=ALICE, timeout=30)

    # auto (and no field) is the key's default tier, echoed as OpenAI does.
    out = alice.chat.completions.create(**body("a b", 2))  # type: ignore[arg-type]
    assert out.service_tier == "flex"
    out = alice.chat.completions.create(**body("a b", 2, service_tier="default"))  # type: ignore[arg-type]
    assert out.service_tier == "default"
    chunks = list(
        alice.chat.completions.create(**body("a b", 2, service_tier="auto", stream=True))  # type: ignore[arg-type]
    )
    assert chunks and {c.service_tier for c in chunks} == {"flex"}
    # A tier the key may not use, and one that does not exist: 400 naming it.
    for tier in ("priority", "gold"):
        with pytest.raises(openai.BadRequestError) as err:
            alice.chat.completions.create(**body("a b", 2, service_tier=tier))  # type: ignore[arg-type]
        assert err.value.body["param"] == "service_tier"  # type: ignore[index]
    assert r.get(f"sw:{{{MODEL}}}:queued") in (None, b"0")

    # The slot is busy; then flex, default and priority jobs arrive, in that order.
    blocker = submit(gw.url, BOB, "busy", 40)
    wait_for(lambda: record(r, blocker).get("status") == "running", what="blocker running")
    flex = submit(gw.url, ALICE, "f", 2)
    default = submit(gw.url, BOB, "d", 2)
    priority = submit(gw.url, BOB, "p", 2, service_tier="priority")
    metrics = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {BOB}"}).text
    assert 'proxy_queued_jobs_by_key{key="alice",model="echo-test",tier="flex"} 1.0' in metrics
    assert 'proxy_queued_jobs_by_key{key="bob",model="echo-test",tier="priority"} 1.0' in metrics
    ids = [priority, default, flex]
    wait_for(
        lambda: all(record(r, j).get("status") == "completed" for j in ids),
        timeout=20,
        what="all jobs done",
    )
    starts = [int(record(r, j)["started_at"]) for j in ids]
    assert starts == sorted(starts), "priority, then default, then flex"
    assert [record(r, j)["tier"] for j in ids] == ["priority", "default", "flex"]


def test_kill9_mid_flex_job_finishes_on_attempt_2(start_gateway, start_worker, r) -> None:
    lease = {"JOB_LEASE_SECONDS": "1"}
    env = {**ECHO, **lease, "ECHO_TOKEN_INTERVAL_MS": "25", "WORKER_CONCURRENCY": "1"}
    first = start_worker(name="sched-a", **env)
    gw = start_gateway(**lease)
    job = submit(gw.url, "unused", "one two three", 60, service_tier="flex")
    wait_for(lambda: int(r.llen(f"sw:{{{MODEL}}}:log:{job}")) >= 5, what="the flex job mid-run")
    first.kill()
    start_worker(name="sched-b", **env)
    wait_for(lambda: record(r, job).get("status") == "completed", timeout=30, what="job done")
    rec = record(r, job)
    assert rec["attempt"] == "2" and rec["worker"] == "sched-b" and rec["tier"] == "flex"
    words = "one two three".split()
    assert rec["text"] == "".join(words[i % 3] + " " for i in range(60))
    resp = httpx.get(f"{gw.url}/v1/jobs/{job}", timeout=5).json()
    assert resp["status"] == "completed"
