"""Per-API-key rate limits: requests and tokens per minute, shared by every
gateway process through one Lua step in Redis (streamworker/protocol/lua/ratelimit.lua).

Token accounting: a request reserves, at admission, its prompt tokens (exact
when the gateway has the model's vocabulary, else an estimate, see
gateway/context_window.py) plus its ``max_tokens``, the most it can use. The
reservation is not refunded when generation stops early: the limit bounds
what a key can make the GPUs do in a minute, so it counts the worst case,
like OpenAI's own TPM accounting. Only job-creating endpoints are counted.

Responses carry OpenAI's headers (``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` and the
``-tokens`` trio); a refusal is a 429 with ``Retry-After`` (seconds) and
``retry-after-ms``, which the openai client honours before it retries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from gateway.auth import API_KEY
from gateway.errors import BadRequest, RateLimited, ServiceUnavailable
from streamworker.protocol import keys

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.auth import ApiKey
    from gateway.settings import GatewaySettings
    from streamworker.protocol.scripts import Scripts

# Response headers for this request, added when the response is prepared
# (request_id.add_response_headers), so streamed responses get them too.
HEADERS = "ratelimit_headers"


def duration(ms: int) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, seconds = divmod(ms / 1000, 60)
    if minutes:
        return f"{int(minutes)}m{round(seconds, 3):g}s"
    return f"{round(seconds, 3):g}s"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rpm: int
    tpm: int
    requests_left: int
    requests_reset_ms: int
    tokens_left: int
    tokens_reset_ms: int
    wait_ms: int

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.rpm:
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(self.requests_left, 0))
            out["x-ratelimit-reset-requests"] = duration(self.requests_reset_ms)
        if self.tpm:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(self.tokens_left, 0))
            out["x-ratelimit-reset-tokens"] = duration(self.tokens_reset_ms)
        return out


def limits_for(key: ApiKey | None, settings: GatewaySettings) -> tuple[int, int]:
    rpm = settings.rate_limit_rpm if key is None or key.rpm is None else key.rpm
    tpm = settings.rate_limit_tpm if key is None or key.tpm is None else key.tpm
    return rpm, tpm


def subject(request: web.Request) -> str:
    """Whose budget: the key's name, or the client address without a key."""
    key: ApiKey | None = request.get(API_KEY)
    if key is not None:
        return f"key:{key.name}"
    # Braces would break the Redis Cluster hash tag the key name sits in.
    return "anon:" + (request.remote or "unknown").replace("{", "_").replace("}", "_")


async def admit(
    scripts: Scripts, who: str, *, rpm: int, tpm: int, cost_tokens: int
) -> Decision | None:
    """Take one request and `cost_tokens` from `who`'s budgets (see
    limits_for), or raise 429. Returns the decision (its headers go on the
    response), or None when neither limit is set."""
    if not rpm and not tpm:
        return None
    if tpm and cost_tokens > tpm:
        # No amount of waiting admits this request: a 429 would send clients
        # into a retry loop, so say what to change instead.
        raise BadRequest(
            f"This request needs up to {cost_tokens} tokens (prompt + max_tokens), more "
            f"than this key's limit of {tpm} tokens per minute; lower max_tokens.",
            param="max_tokens",
            code="tokens_exceed_rate_limit",
        )
    try:
        raw = await scripts.ratelimit(
            keys=[keys.ratelimit(who, "requests"), keys.ratelimit(who, "tokens")],
            args=[rpm, tpm, cost_tokens],
        )
    except (RedisError, OSError):
        raise ServiceUnavailable(
            "The rate limiter is unavailable; retry later.", headers={"Retry-After": "2"}
        ) from None
    allowed, req_left, req_reset, tok_left, tok_reset, wait = (int(v) for v in raw)
    decision = Decision(bool(allowed), rpm, tpm, req_left, req_reset, tok_left, tok_reset, wait)
    if decision.allowed:
        return decision
    which = "requests" if rpm and req_left < 1 else "tokens"
    raise RateLimited(
        f"Rate limit reached for {which} per minute; retry after {duration(wait)}.",
        headers={
            **decision.headers(),
            "Retry-After": str(max(1, math.ceil(wait / 1000))),
            "retry-after-ms": str(max(1, wait)),
        },
    )
