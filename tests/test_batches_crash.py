"""Batches survive crashes with every line answered exactly once: kill -9
of a worker, of the gateway that accepted the batch, and of redis-server
(restarted on its AOF, the project's redis.conf)."""

from __future__ import annotations

import time

from tests.conftest import ECHO, client_for
from tests.harness import wait_for
from tests.test_batches import GATEWAY, answers, chat_line, check_chat, finished, start_batch

LINES = 40
TOKENS = 4
# Echo tokens 40 ms apart: a line runs ~0.2 s, the batch several seconds.
SLOW = {**ECHO, "ECHO_TOKEN_INTERVAL_MS": "40", "WORKER_CONCURRENCY": "4", "JOB_LEASE_SECONDS": "2"}
FAST_LEASES = {**GATEWAY, "BATCH_LEASE_SECONDS": "1", "JOB_LEASE_SECONDS": "2"}


def every_line_once(client, batch) -> None:
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": LINES, "completed": LINES, "failed": 0}
    got = answers(client, batch)
    assert set(got) == {f"chat-{i}" for i in range(LINES)}
    for i in range(LINES):
        check_chat(got[f"chat-{i}"], i, TOKENS)


def some_done(client, batch_id: str, n: int = 6) -> None:
    wait_for(
        lambda: client.batches.retrieve(batch_id).request_counts.completed >= n,
        timeout=30,
        what=f"{n} lines done",
    )


def test_worker_killed_mid_batch(start_gateway, start_worker, r):
    victim = start_worker(name="victim", **SLOW)
    gw = start_gateway(**FAST_LEASES)
    client = client_for(gw, timeout=30)
    batch = start_batch(
        client, [chat_line(i, TOKENS) for i in range(LINES)], "/v1/chat/completions"
    )
    some_done(client, batch.id)
    victim.kill()
    assert client.batches.retrieve(batch.id).status == "in_progress"
    start_worker(name="heir", **SLOW)
    every_line_once(client, finished(client, batch.id, timeout=60))
    # The kill interrupted running lines: their jobs ran again (a second
    # attempt), and still each answered once.
    attempts = [int(r.hget(k, "attempt") or 0) for k in r.scan_iter("sw:{echo-test}:job:*")]
    assert len(attempts) == LINES and max(attempts) >= 2


def test_accepting_gateway_killed_mid_batch(start_gateway, start_worker):
    start_worker(**SLOW)
    first = start_gateway(**FAST_LEASES)
    client = client_for(first, timeout=30)
    batch = start_batch(
        client, [chat_line(i, TOKENS) for i in range(LINES)], "/v1/chat/completions"
    )
    some_done(client, batch.id)
    first.kill()
    # A gateway that never saw the batch picks it up where the dead one left it.
    client = client_for(start_gateway(**FAST_LEASES), timeout=30)
    every_line_once(client, finished(client, batch.id, timeout=60))


def test_redis_killed_and_restarted_mid_batch(redis_server, start_gateway, start_worker):
    start_worker(**SLOW)
    gw = start_gateway(**FAST_LEASES)
    client = client_for(gw, timeout=30)
    batch = start_batch(
        client, [chat_line(i, TOKENS) for i in range(LINES)], "/v1/chat/completions"
    )
    some_done(client, batch.id)
    time.sleep(1.2)  # the batch was accepted more than AOF's one second ago
    redis_server.kill()
    time.sleep(1.0)
    redis_server.start()  # same port and dir: the AOF is replayed
    every_line_once(client, finished(client, batch.id, timeout=90))
