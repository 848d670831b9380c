"""GET /v1/models and /v1/models/{id}: the models a live worker serves, as
OpenAI's model cards (the SDKs' `models.list` and `models.retrieve`)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from gateway import state
from gateway.errors import ModelNotFound
from gateway.openai_types import ModelCard, ModelList


async def _cards(request: web.Request) -> dict[str, ModelCard]:
    """Model -> its card; `created` is when its oldest live worker started."""
    created: dict[str, int] = {}
    for w in await state.of(request.app).models.workers():
        created[w.model] = min(created.get(w.model, w.started_at), w.started_at)
    return {m: ModelCard(id=m, created=c // 1000) for m, c in sorted(created.items())}


async def list_models(request: web.Request) -> web.Response:
    body = ModelList(data=list((await _cards(request)).values()))
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    card = (await _cards(request)).get(model)
    if card is None:
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    return web.Response(body=msgspec.json.encode(card), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    # Model names may hold a '/' (org/name), as Hugging Face spells them.
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
