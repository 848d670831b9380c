"""Webhooks: signed events a key's registered endpoints receive, delivered
at least once from a durable outbox in Redis.

Signing follows Standard Webhooks: headers `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, keyed with the base64 part of the endpoint's
`whsec_` secret. A message is one (event, endpoint) pair with an id derived
from both, so emitting an event twice (a finalize redone after a crash)
queues nothing new. Any gateway delivers any due message, under a short
per-message lease; a non-2xx answer (or none) reschedules it with
exponential backoff until a 2xx or WEBHOOK_MAX_AGE_SECONDS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from redis.exceptions import RedisError

from gateway import batch_store as store
from streamworker.protocol.keys import PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.state import GatewayState

log = logging.getLogger("gateway.webhooks")

# Messages to send (a sorted set, message id -> when due, Unix ms).
OUTBOX = f"{PREFIX}:webhooks:outbox"
EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
LEASE_MS = 30_000
MAX_BACKOFF_SECONDS = 3600.0
DUE_PER_TICK = 20


def endpoints_of(owner: str) -> str:
    """An owner's endpoints (a hash, endpoint id -> JSON with url, events, secret)."""
    return f"{PREFIX}:webhooks:owner:{owner}"


def message_key(msg_id: str) -> str:
    """One message to deliver (a hash: url, secret, body, attempts, first_at)."""
    return f"{PREFIX}:webhook:{{{msg_id}}}"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def endpoints(st: GatewayState, owner: str) -> list[dict[str, Any]]:
    raw = await st.redis.hgetall(endpoints_of(owner))
    return sorted((json.loads(v) for v in raw.values()), key=lambda e: e["created_at"])


async def emit(
    st: GatewayState, owner: str, event_type: str, data: dict[str, Any], *, key: str
) -> None:
    """Queue `event_type` for every endpoint of `owner` that wants it. `key`
    names the thing it is about: the same (key, type, endpoint) is one message."""
    for ep in await endpoints(st, owner):
        if event_type not in ep["events"]:
            continue
        msg_id = "msg_" + hashlib.sha256(f"{key}|{event_type}|{ep['id']}".encode()).hexdigest()[:32]
        event = {
            "id": "evt_" + msg_id.removeprefix("msg_"),
            "object": "event",
            "type": event_type,
            "created_at": store.now_s(),
            "data": data,
        }
        mk = message_key(msg_id)
        created = await st.redis.hsetnx(mk, "body", json.dumps(event))
        if not created:
            continue
        await st.redis.hset(
            mk,
            mapping={
                "url": ep["url"],
                "secret": ep["secret"],
                "attempts": "0",
                "first_at": str(int(time.time() * 1000)),
            },
        )
        await st.redis.zadd(OUTBOX, {msg_id: int(time.time() * 1000)})


async def run(state_of: Callable[[], GatewayState], token: str) -> None:
    """Send due messages every BATCH_POLL_SECONDS, for the process's life."""
    while True:
        st = state_of()
        try:
            await deliver_due(st, token)
        except (RedisError, OSError) as exc:
            log.warning("webhooks: redis unavailable (%s); retrying", type(exc).__name__)
        except Exception:  # a bad message must not stop the others
            log.exception("webhook delivery failed")
        await asyncio.sleep(st.settings.batch_poll_seconds)


async def deliver_due(st: GatewayState, token: str) -> None:
    """Send the messages that are due (those no other gateway is sending)."""
    now = int(time.time() * 1000)
    due = await st.redis.zrangebyscore(OUTBOX, "-inf", now, start=0, num=DUE_PER_TICK)
    for raw in due:
        msg_id = raw.decode()
        lease = message_key(msg_id) + ":lease"
        if not await store.take_lease(st.redis, lease, token, LEASE_MS):
            continue
        try:
            await _deliver(st, msg_id)
        finally:
            await store.drop_lease(st.redis, lease, token)


async def _deliver(st: GatewayState, msg_id: str) -> None:
    redis = st.redis
    mk = message_key(msg_id)
    raw = await redis.hgetall(mk)
    msg = {k.decode(): v for k, v in raw.items()}
    if "body" not in msg or "url" not in msg:
        await redis.zrem(OUTBOX, msg_id)
        return
    body = msg["body"]
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg["secret"].decode(), msg_id, timestamp, body),
    }
    ok = False
    try:
        timeout = aiohttp.ClientTimeout(total=st.settings.webhook_timeout_seconds)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(msg["url"].decode(), data=body, headers=headers) as resp,
        ):
            ok = 200 <= resp.status < 300
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        log.info("webhook %s: %s", msg_id, type(exc).__name__)
    if ok:
        await redis.zrem(OUTBOX, msg_id)
        await redis.delete(mk)
        return
    attempts = int(msg.get("attempts", b"0")) + 1
    first = int(msg.get("first_at", b"0"))
    if time.time() * 1000 - first > st.settings.webhook_max_age_seconds * 1000:
        log.warning("webhook %s: given up after %d attempts", msg_id, attempts)
        await redis.zrem(OUTBOX, msg_id)
        await redis.delete(mk)
        return
    delay = min(MAX_BACKOFF_SECONDS, st.settings.webhook_retry_base_seconds * 2 ** (attempts - 1))
    await redis.hset(mk, "attempts", str(attempts))
    await redis.zadd(OUTBOX, {msg_id: int((time.time() + delay) * 1000)})
