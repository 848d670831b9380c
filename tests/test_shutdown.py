"""SIGTERM: stop reading, finish within the grace period, hand the rest back."""

from __future__ import annotations

import signal
import threading
import time

from tests.conftest import ECHO, client_for
from tests.harness import wait_for
from tests.test_recovery import expected_echo, stream_text


def test_sigterm_drains_running_job(start_gateway, start_worker, r):
    worker = start_worker(
        name="drainer", ECHO_TOKEN_INTERVAL_MS="20", WORKER_SHUTDOWN_GRACE_SECONDS="20", **ECHO
    )
    gw = start_gateway()
    client = client_for(gw, timeout=60)
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(stream_text(client, "drain me", 60)))
    t.start()
    wait_for(lambda: r.xpending("sw:{echo-test}:jobs", "workers")["pending"] == 1, timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    t.join(10)
    assert result == [expected_echo("drain me", 60)]
    assert r.zrange("sw:workers", 0, -1) == []  # it left the registry


def test_sigterm_hands_back_after_grace(start_gateway, start_worker, r):
    """Past the grace period the job goes back at once: another worker takes
    it long before the 30 s lease would have freed it."""
    env = {**ECHO, "ECHO_TOKEN_INTERVAL_MS": "20", "JOB_LEASE_SECONDS": "30"}
    first = start_worker(name="leaving", WORKER_SHUTDOWN_GRACE_SECONDS="0.5", **env)
    gw = start_gateway(JOB_LEASE_SECONDS="30")
    client = client_for(gw, timeout=60)
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(stream_text(client, "hand back", 300)))
    t.start()
    wait_for(lambda: r.xpending("sw:{echo-test}:jobs", "workers")["pending"] == 1, timeout=10)
    time.sleep(0.5)
    start_worker(name="staying", **env)
    t0 = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    t.join(40)
    assert result == [expected_echo("hand back", 300)]
    assert time.monotonic() - t0 < 20
    (key,) = r.keys("sw:{echo-test}:job:*")
    assert r.hget(key, "worker") == b"staying"
    assert r.hget(key, "failures") == b"0", "a graceful hand-back is not a failure"
