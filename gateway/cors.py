"""CORS: off (no headers at all) unless CORS_ALLOW_ORIGINS names origins."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.errors import Handler

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, Idempotency-Key"
EXPOSE_HEADERS = (
    "X-Request-ID, X-Job-Id, Retry-After, x-ratelimit-limit-requests, "
    "x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, "
    "x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)


class Cors:
    def __init__(self, setting: str) -> None:
        self.origins = frozenset(o.strip().rstrip("/") for o in setting.split(",") if o.strip())
        self.any = "*" in self.origins

    def allowed(self, origin: str | None) -> str | None:
        """The value for Access-Control-Allow-Origin, or None."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin.rstrip("/") in self.origins else None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = self.allowed(request.headers.get("Origin"))
        if (
            request.method == "OPTIONS"
            and origin is not None
            and "Access-Control-Request-Method" in request.headers
        ):
            # A preflight: answered here, before auth (browsers send it
            # without credentials) and before routing.
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = self.allowed(request.headers.get("Origin"))
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            response.headers["Vary"] = "Origin"
