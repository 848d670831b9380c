"""Webhooks: a key's endpoint receives a signed event (Standard Webhooks)
when its batch ends, retried with backoff until it answers 2xx. The
receiver is a real aiohttp server on loopback that fails its first
attempts and checks every signature."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time

import httpx
from aiohttp import web

from tests.conftest import ECHO, client_for
from tests.harness import free_port, wait_for
from tests.test_batches import GATEWAY, chat_line, finished, start_batch

FAILURES = 2


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (docs/batches.md): recompute and compare."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    sent = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, s) for s in sent)


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.secret = ""
        self.attempts: list[tuple[float, dict[str, str], bytes, bool]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        ok = verify(self.secret, headers, body)
        self.attempts.append((time.monotonic(), headers, body, ok))
        if len(self.attempts) <= FAILURES:
            return web.Response(status=503)
        return web.Response(status=204 if ok else 400)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Receiver:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_batch_event_is_signed_and_retried_until_accepted(start_gateway, start_worker):
    start_worker(**ECHO)
    gw = start_gateway(**GATEWAY, WEBHOOK_RETRY_BASE_SECONDS="0.3")
    client = client_for(gw, timeout=30)
    with Receiver() as rx:
        made = httpx.post(
            gw.url + "/v1/webhooks",
            json={"url": f"http://127.0.0.1:{rx.port}/hook", "events": ["batch.completed"]},
            timeout=10,
        )
        assert made.status_code == 201, made.text
        endpoint = made.json()
        rx.secret = endpoint["secret"]
        assert rx.secret.startswith("whsec_")
        listed = httpx.get(gw.url + "/v1/webhooks", timeout=10).json()["data"]
        assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
        batch = finished(client, start_batch(client, [chat_line(0)], "/v1/chat/completions").id)
        assert batch.status == "completed"
        wait_for(lambda: len(rx.attempts) > FAILURES, timeout=20, what="the accepted delivery")
        time.sleep(1.0)  # nothing more comes after a 2xx
        assert len(rx.attempts) == FAILURES + 1
        assert all(ok for *_, ok in rx.attempts), "every delivery is signed with the secret"
        ids = {h["webhook-id"] for _, h, _, _ in rx.attempts}
        assert len(ids) == 1, "a retry is the same message"
        event = json.loads(rx.attempts[-1][2])
        assert event["type"] == "batch.completed" and event["data"] == {"id": batch.id}
        gaps = [b[0] - a[0] for a, b in zip(rx.attempts, rx.attempts[1:], strict=False)]
        assert gaps[1] > gaps[0] * 1.5, f"backoff grows: {gaps}"
        # A tampered body does not verify.
        _, headers, body, _ = rx.attempts[-1]
        assert not verify(rx.secret, headers, body.replace(b"completed", b"cancelled"))
        # A failed batch is not an event this endpoint asked for.
        bad = finished(client, start_batch(client, b"{nope", "/v1/chat/completions").id)
        assert bad.status == "failed"
        time.sleep(1.0)
        assert len(rx.attempts) == FAILURES + 1
        gone = httpx.delete(f"{gw.url}/v1/webhooks/{endpoint['id']}", timeout=10)
        assert gone.status_code == 200
        assert httpx.get(gw.url + "/v1/webhooks", timeout=10).json()["data"] == []


def test_outbox_outlives_the_gateway_that_wrote_it(start_gateway, start_worker, r):
    """The receiver is down while the batch ends and the gateway that queued
    the event is killed; another gateway delivers it once the receiver is up."""
    start_worker(**ECHO)
    first = start_gateway(**GATEWAY, WEBHOOK_RETRY_BASE_SECONDS="0.3")
    client = client_for(first, timeout=30)
    port = free_port()  # nothing listens there yet
    made = httpx.post(
        first.url + "/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook"}, timeout=10
    ).json()
    batch = finished(client, start_batch(client, [chat_line(0)], "/v1/chat/completions").id)
    wait_for(lambda: r.zcard("sw:webhooks:outbox") == 1, timeout=10, what="the queued event")
    first.kill()
    with Receiver(port) as rx:
        rx.secret = made["secret"]
        start_gateway(**GATEWAY, WEBHOOK_RETRY_BASE_SECONDS="0.3")
        wait_for(lambda: len(rx.attempts) > FAILURES, timeout=30, what="the accepted delivery")
        assert all(ok for *_, ok in rx.attempts)
        assert json.loads(rx.attempts[-1][2])["data"] == {"id": batch.id}
        wait_for(lambda: r.zcard("sw:webhooks:outbox") == 0, timeout=10, what="an empty outbox")
