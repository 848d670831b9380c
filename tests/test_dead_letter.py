"""A poison job dead-letters after JOB_MAX_ATTEMPTS; operators list and replay it."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest

from tests.conftest import ECHO, client_for
from tests.harness import ROOT, wait_for


def cli(redis_url: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "streamworker", "--redis-url", redis_url, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_poison_job_dead_letters_and_replays(start_gateway, start_worker, redis_url, r):
    env = {**ECHO, "JOB_MAX_ATTEMPTS": "3"}
    worker = start_worker(name="poisoned", **env)
    gw = start_gateway(**env)
    client = client_for(gw, timeout=60)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="echo-test", max_tokens=4, messages=[{"role": "user", "content": "ECHO_FAIL now"}]
        )
    assert info.value.body["code"] == "job_failed"
    assert "3 times" in info.value.body["message"]
    ((dead_id, fields),) = r.xrange("sw:{echo-test}:dead")
    job_id = fields[b"job_id"].decode()
    assert fields[b"attempts"] == b"3"
    assert b"EngineError" in fields[b"last_error"]
    record = r.hgetall(f"sw:{{echo-test}}:job:{job_id}")
    assert record[b"status"] == b"failed" and record[b"failures"] == b"3"
    assert r.xpending("sw:{echo-test}:jobs", "workers")["pending"] == 0
    listed = cli(redis_url, "dead", "list")
    assert job_id in listed and dead_id.decode() in listed
    # The operator fixes the cause (a worker that no longer fails) and replays.
    worker.stop()
    start_worker(name="fixed", ECHO_FAIL_MARKER="NO_SUCH_MARKER", **env)
    out = cli(redis_url, "dead", "replay", dead_id.decode())
    assert job_id in out
    wait_for(
        lambda: r.hget(f"sw:{{echo-test}}:job:{job_id}", "status") == b"completed",
        timeout=20,
        what="replayed job to complete",
    )
    assert r.xlen("sw:{echo-test}:dead") == 0
    assert r.hget(f"sw:{{echo-test}}:job:{job_id}", "text") == b"ECHO_FAIL now ECHO_FAIL now "


def test_permanent_error_fails_at_once_without_retry(start_worker, redis_url, r):
    """A prompt that cannot fit the context fails on its first attempt with
    context_length_exceeded: no retries, no dead letter."""
    import anyio
    from redis.asyncio import Redis

    from streamworker.protocol.client import JobClient
    from streamworker.protocol.scripts import Scripts
    from streamworker.protocol.settings import QueueSettings
    from streamworker.protocol.wire import GenerationParams, JobRequest, Message

    start_worker(name="tiny-ctx", MODEL_N_CTX="64")

    async def submit() -> None:
        redis = Redis.from_url(redis_url)
        q = JobClient(redis, Scripts(redis), QueueSettings())
        req = JobRequest(
            messages=[Message("user", "word " * 200)], params=GenerationParams(max_tokens=8)
        )
        await q.enqueue("gemma-3-270m", "too-long", req)
        await redis.aclose()

    anyio.run(submit)
    key = "sw:{gemma-3-270m}:job:too-long"
    wait_for(lambda: r.hget(key, "status") == b"failed", timeout=30, what="failed")
    assert r.hget(key, "error_code") == b"context_length_exceeded"
    assert r.hget(key, "attempt") == b"1" and r.hget(key, "failures") == b"0"
    assert r.xlen("sw:{gemma-3-270m}:dead") == 0
    assert r.xpending("sw:{gemma-3-270m}:jobs", "workers")["pending"] == 0
