"""Errors the gateway returns, mapped to OpenAI-shaped bodies in one place.

Every error response is `{"error": {"message", "type", "param", "code"}}`;
handlers raise an `ApiError` subclass and `error_middleware` renders it.
Nothing internal (exception text, tracebacks) reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger("gateway.errors")


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


class BadRequest(ApiError):
    status = 400


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(RateLimited):
    code = "queue_full"


class JobFailed(ApiError):
    status = 500
    type = "server_error"
    code = "job_failed"


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class Timeout(ApiError):
    status = 504
    type = "timeout_error"
    code = "timeout"


_HTTP_TO_API: dict[int, type[ApiError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_TO_API.get(exc.status, ApiError)
        err = cls(exc.reason or "request failed")
        err.status = exc.status
        return err.response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        err = ApiError("internal error", code="internal_error")
        err.status, err.type = 500, "server_error"
        return err.response()
