"""The batches API, OpenAI-compatible (docs/batches.md):

POST /v1/batches              input_file_id, endpoint, completion_window, metadata
GET  /v1/batches              the caller's batches, newest first (after, limit)
GET  /v1/batches/{id}
POST /v1/batches/{id}/cancel

A batch is written to Redis as `validating` and left to the runners
(gateway/batch_runner.py): any gateway process advances it. A batch
belongs to the key that made it; to any other key it does not exist.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from aiohttp import web

from gateway import batch_store as store
from gateway import state
from gateway.admission import caller_of
from gateway.auth import owner_of
from gateway.batch_lines import ENDPOINTS
from gateway.errors import BadRequest, NotFound
from gateway.files_api import limit_param
from gateway.parsing import decode_body

WINDOW = "24h"
_WINDOW_RE = re.compile(r"^([1-9][0-9]*)([smh])$")
_UNIT = {"s": 1, "m": 60, "h": 3600}
MAX_METADATA = 16


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None = None
    output_expires_after: dict[str, Any] | None = None


def _window(value: str, custom: bool) -> int:
    if value == WINDOW:
        return 24 * 3600
    match = _WINDOW_RE.match(value)
    if custom and match:
        return int(match.group(1)) * _UNIT[match.group(2)]
    raise BadRequest("completion_window must be '24h'.", param="completion_window")


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    """OpenAI's limits: 16 pairs, keys up to 64 characters, string values up to 512."""
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA:
        raise BadRequest(f"metadata holds at most {MAX_METADATA} pairs.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise BadRequest(
                "metadata keys are at most 64 characters, values strings of at most 512.",
                param="metadata",
            )


def _not_found(batch_id: str) -> NotFound:
    return NotFound(
        f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found"
    )


async def _view(st: state.GatewayState, meta: dict[str, str]) -> dict[str, Any]:
    ok, err = await store.counts(st.redis, meta["id"])
    return store.batch_object(meta, ok, err)


async def create_batch(request: web.Request) -> web.Response:
    st = state.of(request.app)
    req = decode_body(await request.read(), CreateBatch)
    if req.endpoint not in ENDPOINTS:
        raise BadRequest("endpoint must be one of " + ", ".join(ENDPOINTS) + ".", param="endpoint")
    window = _window(req.completion_window, st.settings.batch_custom_windows)
    _check_metadata(req.metadata)
    if req.output_expires_after is not None:
        raise BadRequest(
            "output_expires_after is not supported; outputs are kept FILES_TTL_SECONDS.",
            param="output_expires_after",
        )
    caller = caller_of(request)
    owner = caller.owner
    file = await store.get_file(st.redis, req.input_file_id, owner)
    if file is None:
        raise NotFound(
            f"No such File object: {req.input_file_id}",
            param="input_file_id",
            code="file_not_found",
        )
    if file["purpose"] != "batch":
        raise BadRequest("The input file's purpose must be 'batch'.", param="input_file_id")
    batch_id = store.new_id("batch_")
    now = store.now_s()
    meta = {
        "id": batch_id,
        "owner": owner,
        "weight": repr(caller.weight),
        "status": "validating",
        "endpoint": req.endpoint,
        "input_file_id": req.input_file_id,
        "completion_window": req.completion_window,
        "created_at": str(now),
        "expires_at": str(now + window),
        "metadata": json.dumps(req.metadata) if req.metadata is not None else "",
        "total": "0",
    }
    # The input must outlive the batch's window (a file's TTL may be shorter).
    await st.redis.expire(store.file_key(req.input_file_id), window + 3600, gt=True)
    await st.redis.expire(store.file_data(req.input_file_id), window + 3600, gt=True)
    await st.redis.hset(store.BatchKeys(batch_id).base, mapping=meta)
    await st.redis.zadd(store.batches_of(owner), {batch_id: now})
    await st.redis.zadd(store.ACTIVE, {batch_id: now})
    return web.json_response(store.batch_object(meta, 0, 0))


async def _find(request: web.Request) -> dict[str, str]:
    st = state.of(request.app)
    batch_id = request.match_info["batch_id"]
    meta = await store.get_batch(st.redis, batch_id)
    if meta is None or meta.get("owner", "") != owner_of(request):
        raise _not_found(batch_id)
    return meta


async def get_batch(request: web.Request) -> web.Response:
    return web.json_response(await _view(state.of(request.app), await _find(request)))


async def cancel_batch(request: web.Request) -> web.Response:
    st = state.of(request.app)
    meta = await _find(request)
    if meta["status"] in ("validating", "in_progress"):
        # Only a batch still running turns to cancelling (a runner may be
        # finalizing it this very moment; then it ends as it was going to).
        await store.set_status(
            st.redis,
            meta["id"],
            ("validating", "in_progress"),
            {"status": "cancelling", "cancelling_at": str(store.now_s())},
        )
        meta = await store.get_batch(st.redis, meta["id"]) or meta
    elif meta["status"] not in ("cancelling", "cancelled"):
        raise BadRequest(f"A batch that is {meta['status']} cannot be cancelled.", param="batch_id")
    return web.json_response(await _view(st, meta))


async def list_batches(request: web.Request) -> web.Response:
    st = state.of(request.app)
    owner = owner_of(request)
    limit = limit_param(request, 20, 100)
    index = store.batches_of(owner)
    ids = await store.list_ids(
        st.redis, index, after=request.query.get("after"), limit=limit, newest_first=True
    )
    data = []
    for batch_id in ids:
        meta = await store.get_batch(st.redis, batch_id)
        if meta is None:
            await st.redis.zrem(index, batch_id)
            continue
        data.append(await _view(st, meta))
    has_more = len(data) > limit
    data = data[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
