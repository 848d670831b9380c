"""The files API, OpenAI-compatible, for batch inputs and outputs:

POST   /v1/files                multipart: `file`, `purpose` (batch)
GET    /v1/files                the caller's files (after, limit, order, purpose)
GET    /v1/files/{id}           one file's object
GET    /v1/files/{id}/content   its bytes
DELETE /v1/files/{id}

Bytes live in Redis (gateway/batch_store.py; docs/batches.md says why),
capped at BATCH_MAX_FILE_BYTES. A file belongs to the key that uploaded
it; to any other key it does not exist (404).
"""

from __future__ import annotations

from aiohttp import web

from gateway import batch_store as store
from gateway import state
from gateway.auth import owner_of
from gateway.errors import BadRequest, NotFound, PayloadTooLarge

PURPOSES = ("batch",)
MAX_LIST = 10_000


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")


async def _read_part(part: object, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):  # type: ignore[attr-defined]
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"A file may be at most {limit} bytes.", param="file")
        chunks.append(chunk)
    return b"".join(chunks)


async def create_file(request: web.Request) -> web.Response:
    st = state.of(request.app)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("Send the file as multipart/form-data.", param="file")
    limit = st.settings.batch_max_file_bytes
    purpose: str | None = None
    data: bytes | None = None
    filename = ""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        name = getattr(part, "name", None)
        if name == "purpose":
            purpose = (await _read_part(part, 1024)).decode(errors="replace").strip()
        elif name == "file":
            filename = getattr(part, "filename", None) or "file.jsonl"
            data = await _read_part(part, limit)
        else:
            await _read_part(part, limit)  # other fields (expires_after...) are read past
    if purpose not in PURPOSES:
        raise BadRequest("purpose must be 'batch'.", param="purpose")
    if data is None:
        raise BadRequest("A file part named 'file' is required.", param="file")
    meta = await store.put_file(
        st.redis,
        file_id=store.new_id("file-"),
        owner=owner_of(request),
        purpose=purpose,
        filename=filename,
        data=data,
        ttl_seconds=st.settings.files_ttl_seconds,
    )
    return web.json_response(store.file_object(meta))


async def _find(request: web.Request) -> dict[str, str]:
    st = state.of(request.app)
    file_id = request.match_info["file_id"]
    meta = await store.get_file(st.redis, file_id, owner_of(request))
    if meta is None:
        raise _not_found(file_id)
    return meta


def limit_param(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise BadRequest(f"limit must be an integer from 1 to {most}.", param="limit")
    return value


async def list_files(request: web.Request) -> web.Response:
    st = state.of(request.app)
    owner = owner_of(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'.", param="order")
    purpose = request.query.get("purpose")
    limit = limit_param(request, MAX_LIST, MAX_LIST)
    index = store.files_of(owner)
    ids = await store.list_ids(
        st.redis,
        index,
        after=request.query.get("after"),
        limit=MAX_LIST,
        newest_first=order == "desc",
    )
    data = []
    for file_id in ids:
        meta = await store.get_file(st.redis, file_id, owner)
        if meta is None:  # expired: tidy the index as we go
            await st.redis.zrem(index, file_id)
            continue
        if purpose and meta["purpose"] != purpose:
            continue
        data.append(store.file_object(meta))
        if len(data) > limit:
            break
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


async def get_file(request: web.Request) -> web.Response:
    return web.json_response(store.file_object(await _find(request)))


async def file_content(request: web.Request) -> web.Response:
    meta = await _find(request)
    data = await store.file_bytes(state.of(request.app).redis, meta["id"])
    if data is None:
        raise _not_found(meta["id"])
    return web.Response(body=data, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    meta = await _find(request)
    await store.delete_file(state.of(request.app).redis, meta["id"], owner_of(request))
    return web.json_response({"id": meta["id"], "object": "file", "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
