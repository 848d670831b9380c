"""The gateway's hardening in one place: which middlewares wrap the handlers
and in what order, the response headers, the development-only routes, and
the admission step a job passes before it is enqueued.

Order, outermost first: request id (so every later log line carries it),
CORS preflight, metrics, error rendering, auth (inside error rendering, so a
401 is an OpenAI-shaped body like any other error).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from gateway import ratelimit, state
from gateway.auth import Keyring, make_auth_middleware
from gateway.context_window import ContextWindow
from gateway.cors import Cors
from gateway.errors import UnsupportedMediaType
from gateway.openapi import openapi_handler
from gateway.request_id import (
    CURRENT_REQUEST,
    add_response_headers,
    request_id_middleware,
)
from streamworker.protocol import logs

if TYPE_CHECKING:
    from gateway.auth import Middleware
    from gateway.chat import ChatJob
    from gateway.errors import Handler
    from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.security")

CONTEXT_WINDOW: web.AppKey[ContextWindow] = web.AppKey("context_window", ContextWindow)


class Hardening:
    def __init__(self, settings: GatewaySettings) -> None:
        """Raises auth.KeyringError when keys are required but unusable."""
        self.settings = settings
        self.keyring = Keyring.from_settings(settings)
        self.cors = Cors(settings.cors_allow_origins) if settings.cors_allow_origins else None

    def middlewares(self, *inner: Middleware) -> list[Middleware]:
        """Our middlewares around the app's own (`inner`, outermost first)."""
        outer: list[Middleware] = [request_id_middleware]
        if self.cors is not None:
            outer.append(self.cors.middleware)
        return [
            *outer,
            *inner,
            make_auth_middleware(self.keyring, self.settings),
            identity_encoding_middleware,
        ]

    def install(self, app: web.Application) -> None:
        app[CONTEXT_WINDOW] = ContextWindow()
        app.on_response_prepare.append(add_response_headers)
        if self.cors is not None:
            app.on_response_prepare.append(self.cors.on_prepare)
        if self.settings.environment == "development":
            app.router.add_get("/openapi.json", openapi_handler)


@web.middleware
async def identity_encoding_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Request bodies are plain: the server does not decompress them
    (auto_decompress=False), so a compressed one is refused, not misread."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            "Compressed request bodies are not supported; send the body without Content-Encoding.",
            param="Content-Encoding",
        )
    return await handler(request)


async def admit(app: web.Application, job: ChatJob, job_id: str) -> ChatJob:
    """Before enqueue (every job-creating endpoint calls it through
    chat.enqueue_job): the prompt must fit the model's context, and the
    caller's rate limits must have room for prompt + max_tokens. Returns the
    job carrying the request id, so the worker logs it too."""
    logs.job_id.set(job_id)
    workers = [w for w in await state.of(app).models.workers() if w.model == job.model]
    prompt_tokens = await app[CONTEXT_WINDOW].prompt_tokens(
        workers, job.request.messages, job.request.params.max_tokens
    )
    request = CURRENT_REQUEST.get()
    if request is not None:
        await ratelimit.admit(request, prompt_tokens + job.request.params.max_tokens)
    if state.of(app).settings.log_prompts and log.isEnabledFor(logging.DEBUG):
        # Opt-in only (LOG_PROMPTS=true and LOG_LEVEL=DEBUG; never in production).
        log.debug("prompt: %s", [(m.role, m.content) for m in job.request.messages])
    rid = logs.request_id.get()
    if not rid:
        return job
    return dataclasses.replace(job, request=msgspec.structs.replace(job.request, request_id=rid))
