"""Gateway metrics: first the names existing dashboards and alerts use
(http_requests_total with method, endpoint and code;
http_request_duration_seconds; proxy_active_jobs, proxy_queued_jobs,
proxy_capacity), then what vLLM users expect.

A client that hangs up is counted under code="499", never as a 5xx: alerts
on the 5xx rate mean the server failed.

The proxy_* gauges describe the whole cluster, so they are read from Redis at
scrape time (the alerts divide one by another), not kept per process.

Several gateway processes on one port (GATEWAY_WORKERS, gateway/supervisor.py)
share their counters and histograms through prometheus-client's multiprocess
mode: each process writes its own files under PROMETHEUS_MULTIPROC_DIR (set by
the supervisor, emptied at its start) and whichever process answers a scrape
adds them all up. The cluster gauges stay out of those files: the answering
process reads them from Redis once, so they are never counted N times.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.errors import status_of_failure

if TYPE_CHECKING:
    from gateway.errors import Handler, Middleware
    from gateway.models import ModelDirectory
    from streamworker.protocol.client import JobClient

START = "metrics.start"  # request key: when the request reached the gateway
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# prometheus-client's switch for multiprocess mode (read when it is imported).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The `key` label of jobs queued without an API key.
ANONYMOUS_KEY = "anonymous"


class ClusterGauges(Collector):
    """The cluster-wide gauges, as last read from Redis by this process.
    A collector of its own rather than Gauge objects: in multiprocess mode
    a Gauge would be written to a file per process and exported once per
    process."""

    HELP: ClassVar[dict[str, str]] = {
        "proxy_active_jobs": "Jobs running on live workers",
        "proxy_queued_jobs": "Jobs waiting in the queue",
        "proxy_capacity": "Job slots across live workers",
        "proxy_live_workers": "Workers with a live heartbeat",
        "proxy_redis_up": "1 if the last scrape could read Redis",
    }

    def __init__(self) -> None:
        self.values = dict.fromkeys(self.HELP, 0.0)
        # (model, key, tier) -> jobs waiting to be dispatched. Keys are job
        # owners, i.e. names from the keys file, so the labels stay bounded.
        self.waiting: dict[tuple[str, str, str], int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, text in self.HELP.items():
            yield GaugeMetricFamily(name, text, value=self.values[name])
        family = GaugeMetricFamily(
            "proxy_queued_jobs_by_key",
            "Jobs waiting to be dispatched, by model, API key and service tier",
            labels=["model", "key", "tier"],
        )
        for labels, n in sorted(self.waiting.items()):
            family.add_metric(list(labels), n)
        yield family


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
        self.cluster = ClusterGauges()
        r.register(self.cluster)
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
        # What /metrics serves: this registry, or with several processes the
        # sum of every process's files plus this process's cluster gauges.
        self.exposed = r
        if os.environ.get(MULTIPROC_DIR_ENV):
            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed)
            self.exposed.register(self.cluster)

    def first_token(self, request: web.Request) -> None:
        """A streamed response sent its first token: TTFT as the client sees it."""
        start = request.get(START)
        if start is not None:
            self.ttft.observe(time.perf_counter() - start)

    async def refresh_cluster(self, models: ModelDirectory, jobs: JobClient) -> None:
        workers = await models.workers()
        depths = await jobs.queued_depths()
        queued = sum(depths.values())
        waiting: dict[tuple[str, str, str], int] = {}
        for model, depth in depths.items():
            if depth:
                for (tier, owner), n in (await jobs.waiting(model)).items():
                    waiting[(model, owner or ANONYMOUS_KEY, tier)] = n
        self.cluster.waiting = waiting
        self.cluster.values.update(
            proxy_active_jobs=sum(w.active for w in workers),
            proxy_capacity=sum(w.slots for w in workers),
            proxy_live_workers=len(workers),
            proxy_queued_jobs=queued,
        )

    async def scrape(self, models: ModelDirectory, jobs: JobClient) -> web.Response:
        """The /metrics page: the cluster gauges read now, then every metric."""
        try:
            # Counters must still be scraped while Redis is down; the cluster
            # gauges then keep their last values and proxy_redis_up says so.
            async with asyncio.timeout(2.0):
                await self.refresh_cluster(models, jobs)
            self.cluster.values["proxy_redis_up"] = 1
        except (RedisError, OSError, TimeoutError):
            self.cluster.values["proxy_redis_up"] = 0
        return web.Response(
            body=generate_latest(self.exposed),
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
