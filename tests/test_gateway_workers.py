"""GATEWAY_WORKERS: several gateway processes on one port under the
supervisor (gateway/supervisor.py), real processes throughout. Metrics add
up whichever process answers the scrape; SIGHUP restarts the processes one
at a time and SIGTERM stops them, both without cutting a stream; systemd
hears READY=1 once every process is ready; embedded Qdrant refuses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import PYTHON, ROOT, Gateway, free_port, wait_for
from tests.test_sd_notify import Listener

ECHO = {"ENGINE": "echo", "MODEL_NAME": "echo-test"}
# A Qdrant server address: several processes cannot share an embedded store.
# Nothing listens there; the gateway starts without it (retrieval fails alone).
SERVER_QDRANT = {"QDRANT_URL": "http://127.0.0.1:9"}


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def submit(url: str, content: str, max_tokens: int = 2) -> httpx.Response:
    """POST /v1/jobs on a client of its own: a new connection, so the kernel
    picks a process."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(
            "/v1/jobs",
            json={
                "model": "echo-test",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": content}],
            },
        )


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text page."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name}{labels}")


def test_metrics_add_up_across_processes(start_worker, start_gateway, tmp_path: Path) -> None:
    start_worker(**ECHO)
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_999999.db").write_bytes(b"left by a process of an earlier run")
    gw = start_gateway(GATEWAY_WORKERS="3", PROMETHEUS_MULTIPROC_DIR=str(prom), **SERVER_QDRANT)
    wait_for(lambda: len(children(gw.pid)) == 3, what="3 gateway processes")
    wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 200, what="ready")
    assert not (prom / "counter_999999.db").exists(), "the directory is emptied at start"
    for i in range(60):
        assert submit(gw.url, f"hello {i}").status_code == 202
    # The requests were spread over the processes: each wrote its own files.
    writers = {int(m[1]) for f in prom.iterdir() if (m := re.match(r"counter_(\d+)\.db", f.name))}
    assert len(writers & children(gw.pid)) >= 2, writers
    # Whichever process answers, the page counts all 60, and the cluster
    # gauges once (one worker with one slot, not three).
    for _ in range(9):
        with httpx.Client(timeout=10) as client:
            page = client.get(gw.url + "/metrics").text
        ok = sample(page, "http_requests_total", endpoint="/v1/jobs", code="202", method="POST")
        assert ok == 60
        assert sample(page, "http_request_duration_seconds_count", endpoint="/v1/jobs") == 60
        assert sample(page, "proxy_capacity") == 1
        assert sample(page, "proxy_live_workers") == 1
        assert page.count("# TYPE proxy_capacity gauge") == 1


def _stream(url: str, out: dict[str, object]) -> None:
    """A 30-token job (3 s at the worker's pace) followed on its event
    stream, with what arrived."""
    try:
        job = submit(url, "one two three", max_tokens=30).json()
        with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=60) as resp:
            out["status"] = resp.status_code
            out["lines"] = [line for line in resp.iter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)


def _started_stream(url: str) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}
    thread = threading.Thread(target=_stream, args=(url, out), daemon=True)
    thread.start()
    time.sleep(0.8)  # the stream is running on some process
    return thread, out


def _complete(out: dict[str, object]) -> None:
    """The stream ran to the job's end: every token, then `end`."""
    assert out.get("status") == 200, out
    lines = out["lines"]
    assert isinstance(lines, list)
    assert '"status":"completed"' in lines[-1] and '"completion_tokens":30' in lines[-1], lines


def test_sighup_restarts_processes_one_at_a_time(start_worker, start_gateway) -> None:
    start_worker(ECHO_TOKEN_INTERVAL_MS="100", WORKER_CONCURRENCY="4", **ECHO)
    gw = start_gateway(GATEWAY_WORKERS="2", **SERVER_QDRANT)
    wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 200, what="ready")
    before = wait_for(lambda: children(gw.pid) if len(children(gw.pid)) == 2 else None)
    streams = [_started_stream(gw.url) for _ in range(3)]
    gw.signal(signal.SIGHUP)
    # Two new processes serve; the old ones finish their streams, then go.
    wait_for(
        lambda: len(children(gw.pid) - before) == 2 and not children(gw.pid) & before,
        timeout=30,
        what="the old processes replaced",
    )
    for thread, out in streams:
        thread.join(30)
        _complete(out)
    assert gw.alive()
    assert submit(gw.url, "after the restart").status_code == 202


def test_sigterm_lets_streams_finish(start_worker, start_gateway) -> None:
    start_worker(ECHO_TOKEN_INTERVAL_MS="100", WORKER_CONCURRENCY="4", **ECHO)
    gw = start_gateway(GATEWAY_WORKERS="2", **SERVER_QDRANT)
    wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 200, what="ready")
    streams = [_started_stream(gw.url) for _ in range(3)]
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0
    for thread, out in streams:
        thread.join(30)
        _complete(out)
    with pytest.raises(httpx.ConnectError):  # nobody listens any more
        httpx.get(gw.url + "/health", timeout=2)


def test_systemd_hears_ready_once_every_process_is(
    start_worker, redis_url: str, tmp_path: Path
) -> None:
    start_worker(**ECHO)
    path = Path(f"/tmp/sw-gw-notify-{os.getpid()}-{time.monotonic_ns()}.sock")
    listener = Listener(path)
    gw = Gateway(
        redis_url,
        tmp_path / "gateway.log",
        GATEWAY_WORKERS="3",
        NOTIFY_SOCKET=str(path),
        WATCHDOG_USEC="2000000",
        **SERVER_QDRANT,
    )
    try:
        gw.start()
        ready = listener.wait("READY", "1", timeout=60)
        assert len(children(gw.pid)) == 3
        listener.wait("STATUS", "3/3 gateway processes ready")
        # Before READY=1 systemd saw fewer than three ready, never three.
        early = [f["STATUS"] for t, f in list(listener.got) if t < ready and "STATUS" in f]
        assert early and all(not s.startswith("3/3") for s in early), early
        time.sleep(2.5)
        assert listener.times("WATCHDOG", after=ready), listener.got
        gw.signal(signal.SIGTERM)
        listener.wait("STOPPING", "1")
        assert gw.wait(30) == 0
    finally:
        gw.stop()
        listener.close()
        path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "cannot share embedded Qdrant"),
        ({"QDRANT_PATH": "/tmp/sw-qdrant"}, "/tmp/sw-qdrant is locked to one process"),
        ({**SERVER_QDRANT, "GATEWAY_PORT": "0"}, "GATEWAY_PORT: 0"),
    ],
)
def test_refuses_what_several_processes_cannot_share(
    redis_url: str, env: dict[str, str], says: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QDRANT_")}
    full = {
        **clean,
        "REDIS_URL": redis_url,
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_WORKERS": "2",
        **env,
    }
    out = subprocess.run(
        [PYTHON, "-m", "gateway"], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: cannot start: "), out.stderr
    assert says in lines[0]
