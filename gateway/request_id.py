"""X-Request-ID: accepted from the client (or a proxy) or generated, returned on
every response, and put on every log line of the request's path through the
`request_id` context variable (streamworker/protocol/logs.py). One access-log line per
request, with the key's name, never the key."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth import API_KEY
from gateway.ratelimit import HEADERS as RATELIMIT_HEADERS
from streamworker.protocol import logs

if TYPE_CHECKING:
    from gateway.errors import Handler

HEADER = "X-Request-ID"
REQUEST_ID = "request_id"
# A client-chosen id goes into logs and headers: accept only a plain token,
# so it cannot forge log fields or split headers.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:+=/-]{1,128}$")

access_log = logging.getLogger("gateway.access")
# The request being served, for code that runs on its behalf below the
# handler without a request argument (admission inside chat.enqueue_job).
CURRENT_REQUEST: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar(
    "current_request", default=None
)


def request_id_of(request: web.Request) -> str:
    offered = request.headers.get(HEADER, "")
    return offered if _ACCEPTABLE.match(offered) else uuid.uuid4().hex


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id_of(request)
    request[REQUEST_ID] = rid
    rid_token = logs.request_id.set(rid)
    # /v1/jobs/{job_id}...: the job is known from the path; job-creating
    # requests set it once the id exists (security.admit).
    job_token = logs.job_id.set(request.match_info.get("job_id"))
    req_token = CURRENT_REQUEST.set(request)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        key = request.get(API_KEY)
        access_log.info(
            "%s %s %d %.1fms key=%s",
            request.method,
            request.path,
            status,
            (time.monotonic() - started) * 1000,
            key.name if key is not None else "-",
        )
        CURRENT_REQUEST.reset(req_token)
        logs.job_id.reset(job_token)
        logs.request_id.reset(rid_token)


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs before headers go out, streamed responses included."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[HEADER] = rid
    for name, value in request.get(RATELIMIT_HEADERS, {}).items():
        response.headers.setdefault(name, value)
