"""POST /v1/embeddings, OpenAI-compatible: a string, a list of strings, a
list of token ids or a list of them -> one vector each, computed by a worker
as one job of kind `embedding` (gateway/embedding.py).

`encoding_format` float or base64 (little-endian float32, what the `openai`
client asks for by default); `dimensions` is honoured only when it is the
model's own (no truncated embeddings are made); `user` is accepted.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import msgspec
from aiohttp import web

from gateway import ratelimit, state
from gateway.admission import caller_of
from gateway.auth import API_KEY
from gateway.embedding import embed, embedding_job
from gateway.errors import BadRequest
from gateway.parsing import decode_body
from gateway.retrieval.resources import retrieval_of
from streamworker.protocol.wire import EmbeddingResult


class EmbeddingRequest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    model: str
    # str | list[str] | list[int] | list[list[int]]: checked in _inputs, as
    # msgspec takes one list type per union.
    input: Any
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None


def _is_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def inputs_of(raw: object, *, max_inputs: int, max_chars: int) -> list[str | list[int]]:
    """The request's inputs as a list, or a 400 naming the bad one."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif _is_ids(raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise BadRequest(
            "input must be a non-empty string, a list of strings, a list of token ids "
            "or a list of token id lists.",
            param="input",
        )
    if len(items) > max_inputs:
        raise BadRequest(f"At most {max_inputs} inputs are allowed.", param="input")
    out: list[str | list[int]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise BadRequest("An input must not be empty.", param=f"input[{i}]")
            if len(item) > max_chars:
                raise BadRequest(
                    f"Input {i} is longer than {max_chars} characters.", param=f"input[{i}]"
                )
            out.append(item)
        elif _is_ids(item):
            out.append(item)
        else:
            raise BadRequest(
                "Each input must be a non-empty string or a non-empty list of token ids.",
                param=f"input[{i}]",
            )
    return out


def _cost(inputs: list[str | list[int]]) -> int:
    """Tokens reserved against the key's limit: exact for ids, an estimate
    (a token per 4 characters, rounded up) for text."""
    return sum(len(x) if isinstance(x, list) else len(x) // 4 + 1 for x in inputs)


async def create_embeddings(request: web.Request) -> web.Response:
    st = state.of(request.app)
    limits = retrieval_of(request.app).settings
    req = decode_body(await request.read(), EmbeddingRequest)
    inputs = inputs_of(
        req.input, max_inputs=limits.max_embedding_inputs, max_chars=st.settings.max_message_chars
    )
    if req.dimensions is not None and req.dimensions < 1:
        raise BadRequest("dimensions must be a positive integer.", param="dimensions")
    caller = caller_of(request)
    await st.models.require(req.model)
    rpm, tpm = ratelimit.limits_for(request.get(API_KEY), st.settings)
    decision = await ratelimit.admit(
        st.scripts, ratelimit.subject(request), rpm=rpm, tpm=tpm, cost_tokens=_cost(inputs)
    )
    request[ratelimit.HEADERS] = decision.headers() if decision is not None else {}
    # OpenAI's embeddings take no service_tier: they run in the key's default tier.
    job = embedding_job(
        req.model,
        inputs,
        owner=caller.owner,
        request_id=caller.request_id,
        tier=caller.default_tier,
        weight=caller.weight,
    )
    result = await embed(st, job)
    body = embeddings_body(req, result)
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


def embeddings_body(req: EmbeddingRequest, result: EmbeddingResult) -> dict[str, Any]:
    """OpenAI's embeddings response for a finished embedding job (also the
    body of a batch line, which must equal this endpoint's answer)."""
    if req.dimensions is not None and req.dimensions != result.dim:
        raise BadRequest(
            f"dimensions {req.dimensions} is not supported; model '{req.model}' makes "
            f"{result.dim}-dimensional embeddings only.",
            param="dimensions",
            code="unsupported_parameter",
        )
    row_bytes = result.dim * 4
    data: list[dict[str, object]] = []
    for i, row in enumerate(result.rows()):
        vector: object = row
        if req.encoding_format == "base64":
            vector = base64.b64encode(result.vectors[i * row_bytes : (i + 1) * row_bytes]).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    total = sum(result.tokens)
    return {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", create_embeddings)
