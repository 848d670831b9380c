"""Errors the gateway returns, mapped to OpenAI-shaped bodies in one place.

Every error response is `{"error": {"message", "type", "param", "code"}}`;
handlers raise an `ApiError` subclass and the error middleware renders it.
Nothing internal (exception text, tracebacks) reaches a client.

A client that hangs up is not an error of ours: its request is counted and
logged as 499 (nginx's "client closed request"), never as a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from streamworker.protocol.outcomes import END_MESSAGES, STATUS_CODES, EndCode, JobStatus

if TYPE_CHECKING:
    from streamworker.protocol.wire import End

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


# How a job that ended without a result reaches its client, by end code.
_END_ERRORS: dict[EndCode, type[ApiError]] = {
    EndCode.CANCELLED: Conflict,
    EndCode.TIMEOUT: Timeout,
    EndCode.CONTEXT_LENGTH_EXCEEDED: ContextLengthExceeded,
    EndCode.JOB_FAILED: JobFailed,
    # The record expired under a waiting client: nothing is left to answer with.
    EndCode.RECORD_GONE: JobFailed,
}
_END_CODES = frozenset(c.value for c in EndCode)
_STATUSES = frozenset(s.value for s in JobStatus)


def end_code(end: End) -> EndCode:
    """Why a job ended without a result. A cancelled or expired job says so
    by its status; a failed one by its code (a code this gateway does not
    know yet, from a newer worker, is a plain failure)."""
    status = JobStatus(end.status) if end.status in _STATUSES else JobStatus.FAILED
    if status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        return STATUS_CODES[status]
    return EndCode(end.code) if end.code in _END_CODES else EndCode.JOB_FAILED


def end_error(end: End) -> ApiError:
    """A job's end other than `completed`, as the error its client gets."""
    code = end_code(end)
    cls = _END_ERRORS[code]
    message = end.message or END_MESSAGES[code]
    if cls is ContextLengthExceeded:
        return cls(message, param="messages")
    # Conflict's own code is generic; a client tells a cancel by "cancelled".
    return cls(message, code=code.value if code is EndCode.CANCELLED else None)


_HTTP_TO_API: dict[int, type[ApiError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

# nginx's code for a request whose client closed the connection first. It is
# never sent (no one is left to read it); it only names the outcome in the
# access log and in http_requests_total, apart from the server's own 5xx.
CLIENT_CLOSED_REQUEST = 499


def client_gone(request: web.Request) -> bool:
    """The client's connection is closed (or closing): nothing more reaches it."""
    transport = request.transport
    return transport is None or transport.is_closing()


def status_of_failure(request: web.Request, exc: BaseException) -> int:
    """The status to count and log for a request whose handler raised `exc`.

    aiohttp cancels the handler when its client disconnects, and a write to a
    client that just left raises ConnectionResetError; with the connection
    gone either one is the client's doing (499). The same exceptions with the
    client still connected (a Redis connection reset, a cancellation at
    shutdown) are the server failing to answer: 500.
    """
    if isinstance(exc, web.HTTPException):
        return exc.status
    if isinstance(exc, asyncio.CancelledError | ConnectionResetError) and client_gone(request):
        return CLIENT_CLOSED_REQUEST
    return 500


def _internal_error() -> ApiError:
    err = ApiError("internal error", code="internal_error")
    err.status, err.type = 500, "server_error"
    return err


def make_error_middleware() -> Middleware:
    """Render every error as an OpenAI-shaped body, in one place."""

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
        except Exception as exc:
            if status_of_failure(request, exc) == CLIENT_CLOSED_REQUEST:
                # A write found the client gone before aiohttp cancelled us.
                # The outer middlewares log and count this stand-in; aiohttp's
                # own attempt to send it fails quietly on the closed transport.
                return web.Response(status=CLIENT_CLOSED_REQUEST)
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _internal_error().response()

    return error_middleware
