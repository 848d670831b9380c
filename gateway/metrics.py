"""Gateway metrics: first the names existing dashboards and alerts use
(http_requests_total with method, endpoint and code;
http_request_duration_seconds; proxy_active_jobs, proxy_queued_jobs,
proxy_capacity), then what vLLM users expect.

A client that hangs up is counted under code="499", never as a 5xx: alerts
on the 5xx rate mean the server failed.

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

from gateway.errors import status_of_failure

if TYPE_CHECKING:
    from gateway.errors import Handler, Middleware
    from gateway.models import ModelDirectory
    from streamworker.protocol.client import JobClient

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

    async def refresh_cluster(self, models: ModelDirectory, jobs: JobClient) -> None:
        workers = await models.workers()
        self.active.set(sum(w.active for w in workers))
        self.capacity.set(sum(w.slots for w in workers))
        self.workers.set(len(workers))
        self.queued.set(sum((await jobs.queued_depths()).values()))

    async def scrape(self, models: ModelDirectory, jobs: JobClient) -> web.Response:
        """The /metrics page: the cluster gauges read now, then every metric."""
        try:
            # Counters must still be scraped while Redis is down; the cluster
            # gauges then keep their last values and proxy_redis_up says so.
            async with asyncio.timeout(2.0):
                await self.refresh_cluster(models, jobs)
            self.redis_up.set(1)
        except (RedisError, OSError, TimeoutError):
            self.redis_up.set(0)
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


def route_label(request: web.Request) -> str:
    """The route template, never the raw path: label values stay bounded."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def make_metrics_middleware(metrics: GatewayMetrics) -> Middleware:
    """Count and time every request. Outside error rendering, so an error
    body is counted with its status; a client that hung up is counted as 499
    (errors.status_of_failure), apart from the server's own failures."""

    @web.middleware
    async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = request[START] = time.perf_counter()

        def observe(code: int) -> None:
            endpoint = route_label(request)
            metrics.requests.labels(request.method, endpoint, str(code)).inc()
            metrics.duration.labels(request.method, endpoint).observe(time.perf_counter() - start)

        try:
            response = await handler(request)
        except BaseException as exc:
            observe(status_of_failure(request, exc))
            raise
        observe(response.status)
        return response

    return metrics_middleware
