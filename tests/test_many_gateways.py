"""Two gateway processes behind the project's nginx config (least_conn), one
Redis: whichever gateway answers, a job is the same job; kill -9 of the one
streaming a job's events and the client resumes on the other with
Last-Event-ID, receiving the rest exactly once."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import ECHO
from tests.harness import Gateway, free_port, wait_for
from tests.test_jobs_api import sse_events
from tests.test_recovery import expected_echo

OPS = Path(__file__).resolve().parent.parent / "ops"


def nginx_conf(tmp: Path, ports: list[int], listen: int) -> Path:
    """The shipped config with a throwaway certificate, a local port and the
    test gateways as its upstream servers; it also names the upstream that
    served each response, so the test knows which gateway to kill."""
    key, cert = str(tmp / "key.pem"), str(tmp / "cert.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", key, "-out", cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    conf = (OPS / "nginx" / "streamworker.conf").read_text()
    servers = "".join(f"server 127.0.0.1:{p} max_fails=3 fail_timeout=30s;\n    " for p in ports)
    for old, new in (
        ("/etc/ssl/certs/cert.pem", str(tmp / "cert.pem")),
        ("/etc/ssl/private/key.pem", str(tmp / "key.pem")),
        ("listen 443 ssl", f"listen 127.0.0.1:{listen} ssl"),
        ("server 127.0.0.1:8080 max_fails=3 fail_timeout=30s;\n    ", servers),
        (
            "proxy_pass http://gateway_backend;\n    }",
            "proxy_pass http://gateway_backend;\n"
            "        add_header X-Upstream $upstream_addr always;\n    }",
        ),
    ):
        assert old in conf, old
        conf = conf.replace(old, new, 1)
    (tmp / "streamworker.conf").write_text(conf)
    main = tmp / "nginx.conf"
    main.write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\ndaemon off;\n"
        f"events {{}}\nhttp {{\n  access_log off;\n  include {tmp}/streamworker.conf;\n}}\n"
    )
    return main


def iter_events(resp: httpx.Response) -> Iterator[dict]:
    """SSE events one by one, so a test can act between two of them."""
    current: dict = {}
    for line in resp.iter_lines():
        if not line:
            if current:
                yield current
                current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = value


@pytest.fixture
def two_gateways(
    start_worker, start_gateway, tmp_path: Path
) -> Iterator[tuple[list[Gateway], str]]:
    if not shutil.which("nginx"):
        pytest.fail("nginx not installed (Debian package nginx-light)")
    start_worker(ECHO_TOKEN_INTERVAL_MS="25", WORKER_CONCURRENCY="2", **ECHO)
    gateways = [
        start_gateway(SSE_KEEPALIVE_SECONDS="0.5"),
        start_gateway(SSE_KEEPALIVE_SECONDS="0.5"),
    ]
    listen = free_port()
    main = nginx_conf(tmp_path, [g.port for g in gateways], listen)
    proc = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(main)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{listen}"
    try:
        wait_for(lambda: httpx.get(base + "/health", verify=False).status_code == 200, what="nginx")
        yield gateways, base
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_job_is_the_same_job_on_every_gateway(two_gateways) -> None:
    gateways, _ = two_gateways
    body = {"model": "echo-test", "max_tokens": 3, "messages": [{"role": "user", "content": "a b"}]}
    headers = {"Idempotency-Key": "same-everywhere"}
    ids = [
        httpx.post(g.url + "/v1/jobs", json=body, headers=headers, timeout=10).json()["id"]
        for g in gateways
    ]
    assert ids[0] == ids[1], "an Idempotency-Key is one job whichever gateway sees it"
    for g in gateways:
        job = wait_for(
            lambda g=g: (
                (j := httpx.get(f"{g.url}/v1/jobs/{ids[0]}", timeout=5).json())["status"]
                == "completed"
                and j
            ),
            what="job completed",
        )
        assert job["result"]["text"] == expected_echo("a b", 3)


def test_kill9_of_the_streaming_gateway_resumes_on_the_other(two_gateways) -> None:
    gateways, base = two_gateways
    body = {
        "model": "echo-test",
        "max_tokens": 120,
        "messages": [{"role": "user", "content": "one two three"}],
    }
    with httpx.Client(base_url=base, verify=False, timeout=30) as http:
        job_id = http.post("/v1/jobs", json=body).json()["id"]
        got: list[dict] = []
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            assert resp.status_code == 200
            serving = int(resp.headers["X-Upstream"].rsplit(":", 1)[1])
            events = iter_events(resp)
            for event in events:
                if event.get("event") == "token":
                    got.append(event)
                if len(got) == 8:
                    break
            victim = next(g for g in gateways if g.port == serving)
            victim.kill()  # SIGKILL, mid-stream
            try:
                got += [e for e in events if e.get("event") == "token"]
            except httpx.HTTPError:
                pass  # the connection died with the gateway
        assert got, "some tokens arrived before the kill"
        last = got[-1]["id"]
        with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last}
        ) as resp:
            assert resp.status_code == 200
            assert int(resp.headers["X-Upstream"].rsplit(":", 1)[1]) != serving
            rest = sse_events(resp)
    tokens = got + [e for e in rest if e.get("event") == "token"]
    seqs = [json.loads(e["data"])["seq"] for e in tokens]
    assert seqs == sorted(set(seqs)), "no token twice"
    assert "".join(json.loads(e["data"])["text"] for e in tokens) == expected_echo(
        "one two three", 120
    ), "no token missing"
    assert rest[-1]["event"] == "end" and json.loads(rest[-1]["data"])["status"] == "completed"


def test_queue_state_reads_the_same_on_every_gateway(two_gateways) -> None:
    """Queue depth, running jobs and queue positions come from Redis, not
    from the process that accepted the jobs: both gateways report the same."""
    gateways, _ = two_gateways

    def job(i: int, tokens: int) -> str:
        body = {
            "model": "echo-test",
            "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"m{i}"}],
        }
        gw = gateways[i % 2]
        resp = httpx.post(gw.url + "/v1/jobs", json=body, timeout=10)
        assert resp.status_code in (200, 202), resp.text
        return resp.json()["id"]

    # Two long jobs fill the worker's two slots (2,000 tokens at 25 ms: 50 s,
    # cancelled below) ...
    running = [job(0, 2000), job(1, 2000)]
    wait_for(
        lambda: all(
            httpx.get(f"{gateways[0].url}/v1/jobs/{j}", timeout=5).json()["status"] == "running"
            for j in running
        ),
        what="both slots busy",
    )
    # ... so three more wait, accepted by alternating gateways.
    waiting = [job(i, 2) for i in range(2, 5)]

    def gauge(gw: Gateway, name: str) -> float:
        text = httpx.get(gw.url + "/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )

    for gw in gateways:
        assert gauge(gw, "proxy_queued_jobs") == 3
    wait_for(
        lambda: all(gauge(gw, "proxy_active_jobs") == 2 for gw in gateways),
        what="both gateways see two running jobs (from worker heartbeats)",
    )

    # Streamed requests asking for their place hear the same count whichever
    # gateway they reach: everything queued before them, plus themselves.
    body = {
        "model": "echo-test",
        "max_tokens": 2,
        "stream": True,
        "messages": [{"role": "user", "content": "late"}],
    }
    readers: list[Iterator[str]] = []
    with ExitStack() as streams:
        for n, gw in enumerate(gateways):
            resp = streams.enter_context(
                httpx.stream(
                    "POST",
                    gw.url + "/v1/chat/completions",
                    json=body,
                    headers={"X-Queue-Position": "true"},
                    timeout=30,
                )
            )
            assert resp.status_code == 200
            # Kept referenced: dropping a half-read line iterator closes the
            # response, and a closed stream cancels its queued job.
            lines = resp.iter_lines()
            readers.append(lines)
            first = next(line for line in lines if line.startswith(": queue-position"))
            assert int(first.rsplit(" ", 1)[1]) == len(waiting) + 1 + n
    for j in running:
        assert httpx.delete(f"{gateways[1].url}/v1/jobs/{j}", timeout=5).status_code < 300
    for j in waiting:
        assert wait_for(
            lambda j=j: (
                httpx.get(f"{gateways[1].url}/v1/jobs/{j}", timeout=5).json()["status"]
                == "completed"
            ),
            what="waiting job completed",
        )
