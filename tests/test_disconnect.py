"""A client that hangs up is not a server error. Whenever a client goes away
(a closed stream, the SDK's close(), a client timeout, a reset connection,
while its job runs or while it waits in the queue) the job is cancelled, the
request is counted as http_requests_total{code="499"} and logged once at
INFO as a disconnect: never a 5xx, never an ERROR line or a traceback.

And the bar for the whole gateway: no bad input, no disconnect, makes it
count a 5xx or log an error."""

from __future__ import annotations

import json
import re
import socket
import struct
import time

import httpx
import openai
import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ECHO, client_for
from tests.harness import Gateway, wait_for
from tests.test_bad_input import CASES as BAD_BODIES

# One slot, 50 ms a token: a job of 1000 tokens outlives every test here.
SLOW_WORKER = {**ECHO, "ECHO_TOKEN_INTERVAL_MS": "50", "WORKER_CONCURRENCY": "1"}
# Keep-alive comments every 0.2 s, so a queued stream sees several.
GATEWAY = {"SSE_KEEPALIVE_SECONDS": "0.2"}
CHAT = "/v1/chat/completions"


def chat(prompt: str, **extra: object) -> dict[str, object]:
    return {
        "model": "echo-test",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


@pytest.fixture
def slow_gateway(start_gateway, start_worker) -> Gateway:
    start_worker(**SLOW_WORKER)
    return start_gateway(**GATEWAY)


# -- the client's side: requests by hand, hung up on purpose -------------------


def send_raw(gw: Gateway, body: dict[str, object], path: str = CHAT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r} arrived: {data[-500:]!r}"
        data += chunk
    return data


def hang_up(sock: socket.socket, *, reset: bool) -> None:
    if reset:
        # Linger 0: the close sends a RST, as a killed client or a proxy's
        # timeout does, instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def job_id_in(head: bytes) -> str:
    match = re.search(rb"(?im)^x-job-id: (\S+)\r$", head)
    assert match, head[:500]
    return match.group(1).decode()


# -- what the gateway and Redis say afterwards ---------------------------------


def job_status(r: redis_sync.Redis, job_id: str) -> str | None:
    raw = r.hget(f"sw:{{echo-test}}:job:{job_id}", "status")
    return raw.decode() if raw is not None else None


def job_with_prompt(r: redis_sync.Redis, prompt: str) -> str:
    """The id of the one job whose request holds `prompt`."""
    found = [
        key.decode().rsplit(":", 1)[1]
        for key in r.scan_iter("sw:{echo-test}:job:*")
        if prompt.encode() in (r.hget(key, "request") or b"")
    ]
    assert len(found) == 1, found
    return found[0]


def wait_cancelled(r: redis_sync.Redis, job_id: str) -> None:
    wait_for(lambda: job_status(r, job_id) == "cancelled", timeout=15, what=f"{job_id} cancelled")


def requests_counted(gw: Gateway) -> dict[tuple[str, str, str], float]:
    """http_requests_total by (method, endpoint, code)."""
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return {
        (s.labels["method"], s.labels["endpoint"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_requests_total"
    }


def log_records(gw: Gateway) -> list[dict[str, object]]:
    return [json.loads(x) for x in gw.output().splitlines() if x.startswith("{")]


def disconnects_logged(gw: Gateway, path: str = CHAT) -> list[dict[str, object]]:
    return [
        x
        for x in log_records(gw)
        if x["logger"] == "gateway.access"
        and f" {path} 499 " in str(x["message"])
        and str(x["message"]).endswith("(client disconnected)")
    ]


def wait_disconnects(gw: Gateway, count: int, path: str = CHAT) -> None:
    """The access line is written once the handler's cleanup is done."""
    wait_for(lambda: len(disconnects_logged(gw, path)) >= count, timeout=10, what="499 lines")


def assert_no_server_error(gw: Gateway) -> None:
    counted = requests_counted(gw)
    assert counted, "no requests counted"
    fives = {k: v for k, v in counted.items() if k[2].startswith("5")}
    assert not fives, f"5xx counted: {fives}"
    output = gw.output()
    assert "Traceback" not in output
    errors = [x for x in log_records(gw) if x["level"] in ("ERROR", "CRITICAL") or "exception" in x]
    assert not errors, errors
    # Every disconnect said so at INFO, no louder.
    assert all(x["level"] == "INFO" for x in disconnects_logged(gw))


# -- the cases --------------------------------------------------------------------


def stream_closed_mid_way(gw: Gateway, r: redis_sync.Redis, *, reset: bool) -> str:
    prompt = f"mid{int(reset)}"
    sock = send_raw(gw, chat(prompt, stream=True))
    job_id = job_id_in(read_until(sock, f'"content":"{prompt} '.encode()))
    hang_up(sock, reset=reset)
    wait_cancelled(r, job_id)
    return job_id


def httpx_short_read(gw: Gateway, r: redis_sync.Redis) -> str:
    with httpx.stream("POST", gw.url + CHAT, json=chat("short", stream=True), timeout=10) as resp:
        job_id = resp.headers["x-job-id"]
        for line in resp.iter_lines():
            if '"content":"short' in line:
                break
    wait_cancelled(r, job_id)
    return job_id


def sdk_stream_closed(gw: Gateway, r: redis_sync.Redis) -> str:
    stream = client_for(gw, timeout=10).chat.completions.create(**chat("sdk"), stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    wait_cancelled(r, chunk.id)
    return chunk.id


def sdk_timeout(gw: Gateway, r: redis_sync.Redis, prompt: str) -> str:
    with pytest.raises(openai.APITimeoutError):
        client_for(gw, timeout=1.0).chat.completions.create(**chat(prompt))
    job_id = job_with_prompt(r, prompt)
    wait_cancelled(r, job_id)
    return job_id


def queued_stream_closed(gw: Gateway, r: redis_sync.Redis, *, reset: bool) -> str:
    """The slot is busy: the job waits, and the client leaves after a keep-alive."""
    prompt = f"waiting{int(reset)}"
    sock = send_raw(gw, chat(prompt, stream=True))
    head = read_until(sock, b": keep-alive")
    job_id = job_id_in(head)
    assert job_status(r, job_id) == "queued"
    read_until(sock, b": keep-alive")  # the next one, so we leave between two
    hang_up(sock, reset=reset)
    wait_cancelled(r, job_id)
    return job_id


def occupy_the_slot(gw: Gateway, r: redis_sync.Redis) -> str:
    blocker = httpx.post(gw.url + "/v1/jobs", json=chat("blocker"), timeout=10).json()["id"]
    wait_for(lambda: job_status(r, blocker) == "running", timeout=15, what="blocker running")
    return blocker


def test_a_stream_closed_mid_way_is_a_disconnect(slow_gateway: Gateway, r) -> None:
    gw = slow_gateway
    stream_closed_mid_way(gw, r, reset=False)
    stream_closed_mid_way(gw, r, reset=True)
    httpx_short_read(gw, r)
    sdk_stream_closed(gw, r)
    wait_disconnects(gw, 4)
    assert requests_counted(gw)[("POST", CHAT, "499")] == 4
    assert_no_server_error(gw)


def test_a_client_timeout_while_the_job_runs_is_a_disconnect(slow_gateway: Gateway, r) -> None:
    gw = slow_gateway
    started = time.monotonic()
    sdk_timeout(gw, r, "impatient")
    # Cancelled at once, not at the job's end (1000 tokens: 50 s).
    assert time.monotonic() - started < 10
    wait_disconnects(gw, 1)
    assert requests_counted(gw)[("POST", CHAT, "499")] == 1
    assert_no_server_error(gw)


def test_leaving_the_queue_is_a_disconnect(slow_gateway: Gateway, r) -> None:
    gw = slow_gateway
    blocker = occupy_the_slot(gw, r)
    queued_stream_closed(gw, r, reset=False)
    queued_stream_closed(gw, r, reset=True)
    sdk_timeout(gw, r, "queued-and-impatient")
    assert job_status(r, blocker) == "running"  # the others' leaving left it alone
    httpx.delete(f"{gw.url}/v1/jobs/{blocker}", timeout=10)
    wait_cancelled(r, blocker)
    wait_disconnects(gw, 3)
    assert requests_counted(gw)[("POST", CHAT, "499")] == 3
    assert_no_server_error(gw)


def test_an_events_reader_leaving_does_not_cancel_the_job(slow_gateway: Gateway, r) -> None:
    gw = slow_gateway
    created = httpx.post(gw.url + "/v1/jobs", json=chat("watched", max_tokens=60), timeout=10)
    job_id = created.json()["id"]
    events = f"/v1/jobs/{job_id}/events"
    with httpx.stream("GET", gw.url + events, timeout=10) as resp:
        for line in resp.iter_lines():
            if line.startswith("event: token"):
                break
    wait_disconnects(gw, 1, events)
    # Reading is not owning: the job runs on to its end.
    wait_for(lambda: job_status(r, job_id) == "completed", timeout=20, what="job completed")
    assert requests_counted(gw)[("GET", "/v1/jobs/{job_id}/events", "499")] == 1
    assert_no_server_error(gw)


def test_no_bad_input_or_disconnect_makes_a_5xx(slow_gateway: Gateway, r) -> None:
    """The bar: everything a client can do wrong against one gateway, and
    every way it can leave; afterwards no 5xx is counted and nothing is
    logged as an error."""
    gw = slow_gateway
    for name, body, status, _param in BAD_BODIES:
        if isinstance(body, bytes):
            resp = httpx.post(gw.url + CHAT, content=body, timeout=10)
        else:
            resp = httpx.post(gw.url + CHAT, json=body, timeout=10)
        assert resp.status_code == status, (name, resp.text)
    oversize = chat("x" * (2 << 20))
    assert httpx.post(gw.url + CHAT, json=oversize, timeout=10).status_code == 413
    assert httpx.get(gw.url + CHAT, timeout=10).status_code == 405
    assert httpx.put(gw.url + "/v1/jobs", json=chat("x"), timeout=10).status_code == 405
    assert httpx.get(gw.url + "/v1/nothing-here", timeout=10).status_code == 404
    assert httpx.get(gw.url + "/v1/jobs/chatcmpl-nope", timeout=10).status_code == 404
    compressed = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert httpx.post(gw.url + CHAT, content=b"\x1f\x8b", headers=compressed).status_code == 415
    bad_resume = httpx.get(
        gw.url + "/v1/jobs/chatcmpl-nope/events", headers={"Last-Event-ID": "x"}, timeout=10
    )
    assert bad_resume.status_code == 404

    stream_closed_mid_way(gw, r, reset=True)
    httpx_short_read(gw, r)
    sdk_stream_closed(gw, r)
    sdk_timeout(gw, r, "bar-running")
    blocker = occupy_the_slot(gw, r)
    queued_stream_closed(gw, r, reset=True)
    sdk_timeout(gw, r, "bar-queued")
    httpx.delete(f"{gw.url}/v1/jobs/{blocker}", timeout=10)

    wait_disconnects(gw, 6)
    counted = requests_counted(gw)
    assert counted[("POST", CHAT, "499")] == 6
    assert counted[("POST", CHAT, "400")] >= len([c for c in BAD_BODIES if c[2] == 400])
    assert_no_server_error(gw)
