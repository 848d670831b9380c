"""Retrieval-augmented chat: `"rag": {"collection": ..., "top_k": 4,
"filter": {...}, "mode": ...}` on a chat completion (the `openai` client
sends it through `extra_body`).

The middleware runs before the chat handler: it retrieves the chunks
nearest to the last user message and leaves them on the request, where the
chat parser puts them first as a system message of numbered sources (the
`rag` field itself is read here, nowhere else); the request then takes the
ordinary chat path, so admission (context window,
rate limits), structured output and tools apply unchanged. The response
carries the sources: a `sources` field in a JSON body, and in a stream one
`event: sources` frame before `data: [DONE]`, shaped as a chunk with no
choices so that OpenAI clients pass over it. A missing collection is a 404
in OpenAI's shape, before any job is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec
from aiohttp import web

from gateway import render, state
from gateway.admission import RETRIEVED_CONTEXT, caller_of
from gateway.errors import BadRequest
from gateway.retrieval.resources import retrieval_of

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

    from gateway.retrieval.store import Hit

CHAT = "/v1/chat/completions"
# Endpoints whose bodies are read for `rag`; only chat serves it.
RAG_PATHS = frozenset({CHAT, "/v1/completions", "/v1/jobs"})


class RagOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    collection: str
    top_k: int | None = None
    filter: dict[str, Any] | None = None
    mode: Literal["dense", "hybrid"] | None = None


class _Envelope(msgspec.Struct, forbid_unknown_fields=False):
    rag: RagOptions | None = None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def last_user_text(messages: object) -> str:
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return _text(m.get("content"))
    return ""


def context_message(hits: list[Hit]) -> str:
    """The system message: the sources, numbered as the answer cites them."""
    parts = [
        "Answer the user's question from the numbered sources below, citing them as [1], [2]. "
        "If the sources do not hold the answer, say so."
    ]
    for i, h in enumerate(hits, 1):
        parts.append(f"[{i}] (document {h.doc_id}, part {h.chunk + 1})\n{h.text}")
    return "\n\n".join(parts)


def sources_view(collection: str, hits: list[Hit]) -> list[dict[str, object]]:
    return [{"index": i, "collection": collection, **h.view()} for i, h in enumerate(hits, 1)]


async def _retrieve(request: web.Request, opts: RagOptions, query: str) -> tuple[str, list[Any]]:
    rs = retrieval_of(request.app)
    service = rs.ready()
    caller = caller_of(request)
    top_k = opts.top_k or rs.settings.rag_default_top_k
    if not 1 <= top_k <= rs.settings.max_top_k:
        raise BadRequest(f"rag.top_k must be 1 to {rs.settings.max_top_k}.", param="rag.top_k")
    info = await service.store.get(opts.collection, caller.owner)
    hits = await service.search(
        state.of(request.app),
        info,
        query,
        top_k=top_k,
        where=opts.filter,
        mode=opts.mode,
        owner=caller.owner,
        request_id=caller.request_id,
    )
    return context_message(hits), sources_view(info.name, hits)


def _options(body: bytes) -> RagOptions | None:
    if b'"rag"' not in body:
        return None
    try:
        return msgspec.json.decode(body, type=_Envelope).rag
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid rag: {exc}", param="rag") from None
    except msgspec.DecodeError:
        return None  # not JSON: the chat handler says so


def make_rag_middleware() -> Middleware:
    @web.middleware
    async def rag(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in RAG_PATHS:
            return await handler(request)
        body = await request.read()
        opts = _options(body)
        if opts is None:
            return await handler(request)
        if request.path != CHAT:
            # The sources could not reach the caller: refuse, never ignore.
            raise BadRequest(
                f"rag is supported on {CHAT} only.", param="rag", code="unsupported_parameter"
            )
        raw = msgspec.json.decode(body)
        query = last_user_text(raw.get("messages"))
        if not query.strip():
            raise BadRequest("rag needs a user message to search with.", param="messages")
        context, sources = await _retrieve(request, opts, query)
        # The chat parser puts the context first as a system message; the
        # sources go out at the end of a stream, before [DONE].
        request[RETRIEVED_CONTEXT] = context
        request[render.TRAILER] = sources_frame(sources)
        response = await handler(request)
        if isinstance(response, web.Response) and response.status == 200 and response.body:
            data = msgspec.json.decode(response.body)  # type: ignore[arg-type]
            data["sources"] = sources
            response.body = msgspec.json.encode(data)
        return response

    return rag


def sources_frame(sources: list[dict[str, object]]) -> bytes:
    """The SSE frame of a streamed answer's sources: a named event shaped as
    a chunk with no choices, which OpenAI clients pass over."""
    body = {"object": "chat.completion.sources", "choices": [], "sources": sources}
    return b"event: sources\ndata: " + msgspec.json.encode(body) + b"\n\n"
