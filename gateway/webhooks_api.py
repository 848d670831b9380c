"""Webhook endpoints of a key (gateway/webhooks.py delivers to them):

POST   /v1/webhooks          {url, events?} -> the endpoint, with its secret (shown once)
GET    /v1/webhooks          the caller's endpoints (no secrets)
DELETE /v1/webhooks/{id}
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from gateway import batch_store as store
from gateway import state, webhooks
from gateway.auth import owner_of
from gateway.errors import BadRequest, NotFound
from gateway.parsing import decode_body

MAX_ENDPOINTS = 16


class CreateEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[str] | None = None


def _public(ep: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in ep.items() if k != "secret"}


async def create_endpoint(request: web.Request) -> web.Response:
    st = state.of(request.app)
    req = decode_body(await request.read(), CreateEndpoint)
    parts = urlsplit(req.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("url must be an absolute http(s) URL.", param="url")
    events = req.events if req.events is not None else list(webhooks.EVENTS)
    for i, event in enumerate(events):
        if event not in webhooks.EVENTS:
            raise BadRequest(
                "events may hold: " + ", ".join(webhooks.EVENTS) + ".", param=f"events[{i}]"
            )
    owner = owner_of(request)
    key = webhooks.endpoints_of(owner)
    if await st.redis.hlen(key) >= MAX_ENDPOINTS:
        raise BadRequest(f"A key may register at most {MAX_ENDPOINTS} endpoints.", param="url")
    ep = {
        "id": store.new_id("we_"),
        "object": "webhook_endpoint",
        "url": req.url,
        "events": sorted(set(events)),
        "created_at": store.now_s(),
        "secret": webhooks.new_secret(),
    }
    await st.redis.hset(key, ep["id"], json.dumps(ep))
    return web.json_response(ep, status=201)


async def list_endpoints(request: web.Request) -> web.Response:
    eps = await webhooks.endpoints(state.of(request.app), owner_of(request))
    return web.json_response({"object": "list", "data": [_public(e) for e in eps]})


async def delete_endpoint(request: web.Request) -> web.Response:
    st = state.of(request.app)
    ep_id = request.match_info["endpoint_id"]
    if not await st.redis.hdel(webhooks.endpoints_of(owner_of(request)), ep_id):
        raise NotFound(f"No webhook endpoint with id '{ep_id}'.", param="endpoint_id")
    return web.json_response({"id": ep_id, "object": "webhook_endpoint", "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks", create_endpoint)
    app.router.add_get("/v1/webhooks", list_endpoints)
    app.router.add_delete("/v1/webhooks/{endpoint_id}", delete_endpoint)
