"""Admission: a request becomes a job only if its body is valid
(gateway/parsing.py), its model is served, its prompt fits the model's
context (gateway/context_window.py) and its caller's rate limits have room
(gateway/ratelimit.py). Nothing reaches the queue before all of that holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway import ratelimit, state
from gateway.auth import API_KEY, owner_of
from gateway.parsing import Caller
from gateway.request_id import REQUEST_ID

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.auth import ApiKey
    from gateway.parsing import NewJob, Parser
    from gateway.state import GatewayState

log = logging.getLogger("gateway.admission")


def caller_of(request: web.Request) -> Caller:
    return Caller(
        request_id=request.get(REQUEST_ID, ""),
        owner=owner_of(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )


async def admit(request: web.Request, parse: Parser) -> NewJob:
    """The job this request asks for, once every check passed; raises the
    ApiError of the first that did not. The rate-limit headers it earned are
    left on the request for the response (ratelimit.HEADERS)."""
    st = state.of(request.app)
    job = parse(await request.read(), st.settings, caller_of(request))
    request[ratelimit.HEADERS] = await check(
        st, job, key=request.get(API_KEY), who=ratelimit.subject(request)
    )
    return job


async def check(st: GatewayState, job: NewJob, *, key: ApiKey | None, who: str) -> dict[str, str]:
    """The checks that need the cluster: the model (404 / 503), the context
    (400 context_length_exceeded) and `who`'s rate limits (429). Returns the
    rate-limit headers to send."""
    await st.models.require(job.model)
    workers = [w for w in await st.models.workers() if w.model == job.model]
    params = job.request.params
    prompt_tokens = await st.context_window.prompt_tokens(
        workers, job.request.messages, params.max_tokens
    )
    rpm, tpm = ratelimit.limits_for(key, st.settings)
    decision = await ratelimit.admit(
        st.scripts, who, rpm=rpm, tpm=tpm, cost_tokens=prompt_tokens + params.max_tokens
    )
    if st.settings.log_prompts and log.isEnabledFor(logging.DEBUG):
        # Opt-in only (LOG_PROMPTS=true and LOG_LEVEL=DEBUG; never in production).
        log.debug("prompt: %s", [(m.role, m.content) for m in job.request.messages])
    return decision.headers() if decision is not None else {}
