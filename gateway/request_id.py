"""X-Request-ID: accepted from the client (or a proxy) or generated, returned on
every response, and put on every log line of the request's path through the
`request_id` context variable (streamworker/protocol/logs.py). One access-log line per
request, with the key's name, never the key; a client that hung up is logged
there as 499 (client disconnected), not as a server error."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth import API_KEY
from gateway.errors import CLIENT_CLOSED_REQUEST, status_of_failure
from gateway.ratelimit import HEADERS as RATELIMIT_HEADERS
from streamworker.protocol import logs

if TYPE_CHECKING:
    from gateway.errors import Handler, Middleware

HEADER = "X-Request-ID"
REQUEST_ID = "request_id"
# A client-chosen id goes into logs and headers: accept only a plain token,
# so it cannot forge log fields or split headers.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:+=/-]{1,128}$")

access_log = logging.getLogger("gateway.access")


def request_id_of(request: web.Request) -> str:
    offered = request.headers.get(HEADER, "")
    return offered if _ACCEPTABLE.match(offered) else uuid.uuid4().hex


def make_request_id_middleware() -> Middleware:
    """The outermost middleware: sets the request id (and the job id, when the
    path names one) for every log line below, and writes the access line."""

    @web.middleware
    async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id_of(request)
        request[REQUEST_ID] = rid
        rid_token = logs.request_id.set(rid)
        # /v1/jobs/{job_id}...: the job is known from the path; job-creating
        # requests set it once the id exists (submit.enqueue).
        job_token = logs.job_id.set(request.match_info.get("job_id"))
        started = time.monotonic()
        status = 500  # for the type checker: every path below sets it
        try:
            response = await handler(request)
            status = response.status
            return response
        except BaseException as exc:
            status = status_of_failure(request, exc)
            raise
        finally:
            _log_access(request, status, time.monotonic() - started)
            logs.job_id.reset(job_token)
            logs.request_id.reset(rid_token)

    return request_id_middleware


def _log_access(request: web.Request, status: int, seconds: float) -> None:
    key = request.get(API_KEY)
    access_log.info(
        "%s %s %d %.1fms key=%s%s",
        request.method,
        request.path,
        status,
        seconds * 1000,
        key.name if key is not None else "-",
        # A hang-up is routine (a closed tab, a client timeout): said once
        # here, at INFO, rather than as an error with a traceback.
        " (client disconnected)" if status == CLIENT_CLOSED_REQUEST else "",
    )


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs before headers go out, streamed responses included."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[HEADER] = rid
    for name, value in request.get(RATELIMIT_HEADERS, {}).items():
        response.headers.setdefault(name, value)
