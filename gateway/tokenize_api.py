"""POST /tokenize and /detokenize, as llama-server serves them, so clients
can count tokens without the model.

The gateway answers them itself with the workers' own vocabulary
(streamworker/tokenizer.py, the model file a live worker announces; the
same loader the context check uses): no job, no queue. A model whose file
the gateway cannot read is a 503 `tokenizer_unavailable`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from gateway import state
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.openai_types import DetokenizeRequest, TokenizeRequest
from gateway.parsing import decode_body

if TYPE_CHECKING:
    from streamworker.tokenizer import PromptBuilder


async def _tokenizer(request: web.Request, model: str | None) -> PromptBuilder:
    st = state.of(request.app)
    workers = await st.models.workers()
    if model is None:
        served = {w.model for w in workers}
        if len(served) != 1:
            raise BadRequest("Name the model whose tokenizer to use.", param="model")
        model = served.pop()
    await st.models.require(model)  # 404 unknown, 503 no live worker
    tokenizer = await st.context_window.tokenizer([w for w in workers if w.model == model])
    if tokenizer is None:
        raise ServiceUnavailable(
            f"The tokenizer of model '{model}' is not readable from this gateway.",
            code="tokenizer_unavailable",
        )
    return tokenizer


def _piece(data: bytes) -> str | list[int]:
    """A token's text, or its bytes when they are not whole UTF-8 (as llama-server)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


def _json(body: object) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def tokenize(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), TokenizeRequest)
    tok = await _tokenizer(request, req.model)
    tokens = await asyncio.to_thread(
        tok.tokenize, req.content, add_special=req.add_special, parse_special=req.parse_special
    )
    if not req.with_pieces:
        return _json({"tokens": tokens})
    return _json({"tokens": [{"id": t, "piece": _piece(tok.piece(t))} for t in tokens]})


async def detokenize(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), DetokenizeRequest)
    tok = await _tokenizer(request, req.model)
    for i, t in enumerate(req.tokens):
        if not 0 <= t < tok.n_vocab:
            raise BadRequest(
                f"Token id {t} is not in the model's vocabulary of {tok.n_vocab}.",
                param=f"tokens[{i}]",
            )
    return _json({"content": await asyncio.to_thread(tok.detokenize, req.tokens)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
