"""Collections and documents under API_PREFIX (/api/v1 by default):

POST   /collections                        {name, shared?} -> 201 (dimension from the model)
GET    /collections                        the caller's own and shared ones
GET    /collections/{name}                 points, dimension, model, owner, shared
DELETE /collections/{name}                 owner only
POST   /collections/{name}/documents       {id?, text, metadata?, format?} -> chunks
PUT    /collections/{name}/documents/{id}  {text, metadata?, format?}: replaces it
GET    /collections/{name}/documents       ?limit=&offset= (one row per document)
DELETE /collections/{name}/documents/{id}

A collection belongs to the API key that made it: other keys get 404, as
for one that does not exist, unless it was made `shared`, which lets every
key read and search it (only its owner may write or delete).
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from gateway import state
from gateway.admission import caller_of
from gateway.errors import BadRequest, NotFound
from gateway.parsing import decode_body
from gateway.retrieval.resources import retrieval_of

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_DOC_ID = re.compile(r"^[^\x00-\x1f]{1,256}$")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class NewCollection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    shared: bool = False


class DocumentBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    text: str
    id: str | None = None
    metadata: dict[str, Any] = {}
    # auto: Markdown when the text has headings.
    format: Literal["auto", "text", "markdown"] = "auto"


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadRequest(
            "A collection name is 1-64 letters, digits, '_' or '-', starting with a letter "
            "or digit.",
            param="name",
        )
    return name


def _doc_id(value: str) -> str:
    if not _DOC_ID.match(value):
        raise BadRequest(
            "A document id is 1-256 characters, without control characters.", param="id"
        )
    return value


async def create_collection(request: web.Request) -> web.Response:
    st = state.of(request.app)
    service = retrieval_of(request.app).ready()
    body = decode_body(await request.read(), NewCollection)
    name = check_name(body.name)
    caller = caller_of(request)
    dim = await service.dimension(st, owner=caller.owner, request_id=caller.request_id)
    info = await service.store.create(
        name,
        caller.owner,
        model=service.settings.embedding_model,
        dimension=dim,
        shared=body.shared,
    )
    return _json(info.view(), 201)


async def list_collections(request: web.Request) -> web.Response:
    store = retrieval_of(request.app).store
    infos = await store.list(caller_of(request).owner)
    return _json({"object": "list", "data": [i.view() for i in infos]})


async def get_collection(request: web.Request) -> web.Response:
    store = retrieval_of(request.app).store
    info = await store.get(request.match_info["name"], caller_of(request).owner)
    return _json(info.view())


async def delete_collection(request: web.Request) -> web.Response:
    store = retrieval_of(request.app).store
    info = await store.get(request.match_info["name"], caller_of(request).owner, write=True)
    await store.delete(info)
    return _json({"name": info.name, "object": "collection", "deleted": True})


async def _put(request: web.Request, doc_id: str | None) -> web.Response:
    st = state.of(request.app)
    service = retrieval_of(request.app).ready()
    caller = caller_of(request)
    info = await service.store.get(request.match_info["name"], caller.owner, write=True)
    body = decode_body(await request.read(), DocumentBody)
    if doc_id is not None and body.id is not None and body.id != doc_id:
        raise BadRequest("The body's id differs from the path's.", param="id")
    final_id = _doc_id(doc_id or body.id or uuid.uuid4().hex)
    markdown = None if body.format == "auto" else body.format == "markdown"
    chunks = await service.ingest(
        st,
        info,
        final_id,
        body.text,
        body.metadata,
        markdown=markdown,
        owner=caller.owner,
        request_id=caller.request_id,
    )
    return _json(
        {"id": final_id, "object": "document", "collection": info.name, "chunks": chunks},
        201 if doc_id is None else 200,
    )


async def add_document(request: web.Request) -> web.Response:
    return await _put(request, None)


async def replace_document(request: web.Request) -> web.Response:
    return await _put(request, request.match_info["doc_id"])


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdecimal() or not 1 <= int(raw) <= 1000:
        raise BadRequest("limit must be an integer from 1 to 1000.", param="limit")
    return int(raw)


async def list_documents(request: web.Request) -> web.Response:
    store = retrieval_of(request.app).store
    info = await store.get(request.match_info["name"], caller_of(request).owner)
    docs, nxt = await store.documents(info, _limit(request), request.query.get("offset") or None)
    return _json({"object": "list", "data": docs, "next_offset": nxt})


async def delete_document(request: web.Request) -> web.Response:
    store = retrieval_of(request.app).store
    info = await store.get(request.match_info["name"], caller_of(request).owner, write=True)
    doc_id = request.match_info["doc_id"]
    removed = await store.delete_document(info, doc_id)
    if not removed:
        raise NotFound(f"No document with id '{doc_id}'.", param="id", code="document_not_found")
    return _json({"id": doc_id, "object": "document", "deleted": True, "chunks": removed})


def add_routes(app: web.Application, prefix: str) -> None:
    c = f"{prefix}/collections"
    app.router.add_post(c, create_collection)
    app.router.add_get(c, list_collections)
    app.router.add_get(c + "/{name}", get_collection)
    app.router.add_delete(c + "/{name}", delete_collection)
    app.router.add_post(c + "/{name}/documents", add_document)
    app.router.add_get(c + "/{name}/documents", list_documents)
    app.router.add_put(c + "/{name}/documents/{doc_id:.+}", replace_document)
    app.router.add_delete(c + "/{name}/documents/{doc_id:.+}", delete_document)
