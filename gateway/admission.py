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
from gateway.errors import BadRequest
from gateway.parsing import Caller
from gateway.request_id import REQUEST_ID

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.auth import ApiKey
    from gateway.parsing import NewJob, Parser
    from gateway.state import GatewayState
    from streamworker.protocol.registry import WorkerInfo

log = logging.getLogger("gateway.admission")


# Request key: sources a middleware retrieved for this request (gateway/rag.py).
RETRIEVED_CONTEXT = "retrieved_context"


def caller_of(request: web.Request) -> Caller:
    key: ApiKey | None = request.get(API_KEY)
    scheduling = (
        {"tiers": tuple(key.tiers), "default_tier": key.default_tier, "weight": key.weight}
        if key is not None
        else {}
    )
    return Caller(
        request_id=request.get(REQUEST_ID, ""),
        owner=owner_of(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
        context=request.get(RETRIEVED_CONTEXT, ""),
        **scheduling,
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


def _check_choices(workers: list[WorkerInfo], n: int) -> None:
    """A batched worker decodes a job's choices side by side, one slot
    each, and fails a job with more choices than slots; any live worker of
    the model may take the job, so the smallest such worker sets the bound
    (single-sequence engines run choices one after another)."""
    batched = [w.slots for w in workers if w.engine == "batched" and w.slots > 0]
    if batched and n > min(batched):
        raise BadRequest(
            f"n must be at most {min(batched)} for this model (its workers' slots).",
            param="n",
        )


async def check(st: GatewayState, job: NewJob, *, key: ApiKey | None, who: str) -> dict[str, str]:
    """The checks that need the cluster: the model (404 / 503), the context
    (400 context_length_exceeded) and `who`'s rate limits (429). Returns the
    rate-limit headers to send."""
    await st.models.require(job.model)
    workers = [w for w in await st.models.workers() if w.model == job.model]
    params = job.request.params
    _check_choices(workers, params.n)
    prompt_tokens = 0
    for request in job.requests:
        prompt_tokens += await st.context_window.prompt_tokens(workers, request, params.max_tokens)
    # Every choice of every prompt may run to max_tokens.
    completion_tokens = params.max_tokens * params.n * len(job.requests)
    rpm, tpm = ratelimit.limits_for(key, st.settings)
    decision = await ratelimit.admit(
        st.scripts, who, rpm=rpm, tpm=tpm, cost_tokens=prompt_tokens + completion_tokens
    )
    if st.settings.log_prompts and log.isEnabledFor(logging.DEBUG):
        # Opt-in only (LOG_PROMPTS=true and LOG_LEVEL=DEBUG; never in production).
        log.debug("prompt: %s", [(m.role, m.content) for m in job.request.messages])
    return decision.headers() if decision is not None else {}
