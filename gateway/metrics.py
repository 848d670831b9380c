"""Gateway metrics: first the names existing dashboards and alerts use
(http_requests_total with method, endpoint and code;
http_request_duration_seconds; proxy_active_jobs, proxy_queued_jobs,
proxy_capacity), then what vLLM users expect.

The proxy_* gauges describe the whole cluster, so they are read from Redis at
scrape time (the alerts divide one by another), not kept per process.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.exceptions import RedisError

from gateway import state

if TYPE_CHECKING:
    from gateway.errors import Handler

START = "metrics.start"  # request key: when the request reached the gateway
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "endpoint", "code"], registry=r
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency (whole response)",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active = Gauge("proxy_active_jobs", "Jobs running on live workers", registry=r)
        self.queued = Gauge("proxy_queued_jobs", "Jobs waiting in the queue", registry=r)
        self.capacity = Gauge("proxy_capacity", "Job slots across live workers", registry=r)
        self.workers = Gauge("proxy_live_workers", "Workers with a live heartbeat", registry=r)
        self.redis_up = Gauge("proxy_redis_up", "1 if the last scrape could read Redis", registry=r)
        self.rejected = Counter(
            "proxy_rejected_total",
            "Requests refused with 429 because the queue was full",
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "From request to the first token sent to the client",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def first_token(self, request: web.Request) -> None:
        """A streamed response sent its first token: TTFT as the client sees it."""
        start = request.get(START)
        if start is not None:
            self.ttft.observe(time.perf_counter() - start)

    async def refresh_cluster(self, app: web.Application) -> None:
        st = state.of(app)
        workers = await st.models.workers()
        self.active.set(sum(w.active for w in workers))
        self.capacity.set(sum(w.slots for w in workers))
        self.workers.set(len(workers))
        self.queued.set(sum((await st.jobs.queued_depths()).values()))


def route_label(request: web.Request) -> str:
    """The route template, never the raw path: label values stay bounded."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = state.of(request.app).metrics
    start = request[START] = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as exc:
        code = exc.status
        raise
    finally:
        endpoint = route_label(request)
        metrics.requests.labels(request.method, endpoint, str(code)).inc()
        metrics.duration.labels(request.method, endpoint).observe(time.perf_counter() - start)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = state.of(request.app).metrics
    try:
        # Counters must still be scraped while Redis is down; the cluster
        # gauges then keep their last values and proxy_redis_up says so.
        async with asyncio.timeout(2.0):
            await metrics.refresh_cluster(request.app)
        metrics.redis_up.set(1)
    except (RedisError, OSError, TimeoutError):
        metrics.redis_up.set(0)
    return web.Response(
        body=generate_latest(metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )
