"""The queue as an operator sees it with redis-cli: XINFO, XRANGE, pending."""

from __future__ import annotations

import json
import threading

from tests.conftest import ECHO, client_for
from tests.harness import wait_for

STREAM = "sw:{echo-test}:jobs"


def test_group_consumers_and_empty_pending(echo_stack, r):
    gateway, worker = echo_stack
    client = client_for(gateway)
    for _ in range(3):
        client.chat.completions.create(
            model="echo-test", max_tokens=3, messages=[{"role": "user", "content": "x y"}]
        )
    groups = r.xinfo_groups(STREAM)
    assert [g["name"] for g in groups] == [b"workers"]
    consumers = r.xinfo_consumers(STREAM, "workers")
    assert worker.name.encode() in [c["name"] for c in consumers]
    assert r.xpending(STREAM, "workers")["pending"] == 0
    # Finished entries are acknowledged, then deleted: the stream holds only
    # jobs that are queued or running.
    assert r.xlen(STREAM) == 0
    assert int(r.get("sw:{echo-test}:queued")) == 0


def test_entries_are_readable(start_gateway, start_worker, r):
    start_worker(ECHO_TOKEN_INTERVAL_MS="50", **ECHO)
    gateway = start_gateway()
    client = client_for(gateway, timeout=60)
    results: list[str] = []

    def ask(text: str) -> None:
        out = client.chat.completions.create(
            model="echo-test", max_tokens=20, messages=[{"role": "user", "content": text}]
        )
        results.append(out.choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(t,)) for t in ("first", "second")]
    for t in threads:
        t.start()
    # While the first job runs, the second waits in the stream, readable.
    entries = wait_for(
        lambda: [e for e in r.xrange(STREAM) if b"second" in e[1][b"payload"]],
        timeout=10,
        what="the queued entry",
    )
    fields = entries[0][1]
    assert fields[b"job_id"].startswith(b"chatcmpl-")
    assert fields[b"model"] == b"echo-test"
    payload = json.loads(fields[b"payload"])
    assert payload["messages"] == [{"role": "user", "content": "second"}]
    assert payload["params"]["max_tokens"] == 20
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(["first " * 20, "second " * 20])
    record = r.hgetall("sw:{echo-test}:job:" + fields[b"job_id"].decode())
    assert record[b"status"] == b"completed" and record[b"attempt"] == b"1"
    assert ECHO["MODEL_NAME"] == "echo-test"
