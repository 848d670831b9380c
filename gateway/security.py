"""The gateway's hardening in one place: which middlewares wrap the handlers
and in what order, the response headers, and the development-only routes.
(What a job must pass before it is enqueued is gateway/admission.py.)

Order, outermost first: request id and access log (so every later log line
carries the id), CORS preflight, metrics (outside error rendering, so every
error is counted with its status), error rendering, auth (inside error
rendering, so a 401 is an OpenAI-shaped body like any other error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth import Keyring, make_auth_middleware
from gateway.cors import Cors
from gateway.errors import UnsupportedMediaType, make_error_middleware
from gateway.metrics import make_metrics_middleware
from gateway.openapi import openapi_handler
from gateway.request_id import add_response_headers, make_request_id_middleware

if TYPE_CHECKING:
    from gateway.errors import Handler, Middleware
    from gateway.metrics import GatewayMetrics
    from gateway.settings import GatewaySettings


class Hardening:
    def __init__(self, settings: GatewaySettings) -> None:
        """Raises auth.KeyringError when keys are required but unusable."""
        self.settings = settings
        self.keyring = Keyring.from_settings(settings)
        self.cors = Cors(settings.cors_allow_origins) if settings.cors_allow_origins else None

    def middlewares(self, metrics: GatewayMetrics) -> list[Middleware]:
        """Every middleware of the app, outermost first, built with what it uses."""
        chain: list[Middleware] = [make_request_id_middleware()]
        if self.cors is not None:
            chain.append(self.cors.middleware)
        return [
            *chain,
            make_metrics_middleware(metrics),
            make_error_middleware(),
            make_auth_middleware(
                self.keyring, ops_protected=self.settings.ops_endpoints_require_key
            ),
            identity_encoding_middleware,
        ]

    def install(self, app: web.Application) -> None:
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
