"""POST {API_PREFIX}/search: query text -> the nearest chunks of a
collection, with scores, document ids and metadata.

Rate-limited per API key (per client address without keys) at
SEARCH_RATE_LIMIT_RPM, 100 a minute by default, in a bucket of its own so
that searching never eats the key's chat budget: 429 with Retry-After.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from gateway import ratelimit, state
from gateway.admission import caller_of
from gateway.errors import BadRequest
from gateway.parsing import decode_body
from gateway.retrieval.resources import retrieval_of

TopK = Annotated[int, msgspec.Meta(ge=1)]


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    collection: str
    query: str
    top_k: TopK = 5
    filter: dict[str, Any] | None = None
    # Unset: RETRIEVAL_MODE.
    mode: Literal["dense", "hybrid"] | None = None


async def limit_searches(request: web.Request, rpm: int) -> None:
    """One request from the caller's search budget, or 429."""
    st = state.of(request.app)
    decision = await ratelimit.admit(
        st.scripts, ratelimit.subject(request) + ":search", rpm=rpm, tpm=0, cost_tokens=0
    )
    if decision is not None:
        request[ratelimit.HEADERS] = decision.headers()


async def search(request: web.Request) -> web.Response:
    st = state.of(request.app)
    rs = retrieval_of(request.app)
    service = rs.ready()
    await limit_searches(request, rs.settings.search_rate_limit_rpm)
    req = decode_body(await request.read(), SearchRequest)
    if not req.query.strip():
        raise BadRequest("query must not be empty.", param="query")
    if req.top_k > rs.settings.max_top_k:
        raise BadRequest(f"top_k must be at most {rs.settings.max_top_k}.", param="top_k")
    caller = caller_of(request)
    info = await service.store.get(req.collection, caller.owner)
    hits = await service.search(
        st,
        info,
        req.query,
        top_k=req.top_k,
        where=req.filter,
        mode=req.mode,
        owner=caller.owner,
        request_id=caller.request_id,
    )
    body = {
        "object": "list",
        "collection": info.name,
        "mode": req.mode or rs.settings.retrieval_mode,
        "data": [h.view() for h in hits],
    }
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(prefix + "/search", search)
