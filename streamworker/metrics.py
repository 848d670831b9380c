"""Worker metrics, served on WORKER_METRICS_PORT (default 5345 + the instance number).

Names follow what vLLM users know, under the streamworker_ prefix; the proxy's
proxy_active_jobs and proxy_capacity describe this worker here (the gateway's
/metrics gives the same names for the whole cluster).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

log = logging.getLogger("streamworker.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0)
# The `key` label of jobs queued without an API key.
ANONYMOUS = "anonymous"
# The API key (job owner) of the job this task runs: set by the worker for
# each job's own task, so per-key counts need no owner passed around.
job_owner: ContextVar[str] = ContextVar("job_owner", default="")


def key_label(owner: str) -> str:
    """The owner is the name of a key in the gateway's keys file (or none), so
    the label's values are bounded by the configured keys."""
    return owner or ANONYMOUS


# (metric, engine attribute, help): counters the batched engine keeps.
ENGINE_COUNTERS = (
    (
        "streamworker_prefix_cache_queries",
        "queried",
        "Prompt tokens of jobs that looked for a cached prefix",
    ),
    (
        "streamworker_prefix_cache_hits",
        "reused",
        "Prompt tokens taken from the prefix cache instead of prefilled",
    ),
    ("streamworker_prefill_tokens", "prefilled", "Prompt tokens prefilled (decoded)"),
)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.active = Gauge("proxy_active_jobs", "Jobs this worker runs now", registry=r)
        self.capacity = Gauge("proxy_capacity", "This worker's job slots", registry=r)
        self.jobs = Counter(
            "streamworker_jobs_total", "Jobs ended, by final status", ["status"], registry=r
        )
        self.skipped = Counter(
            "streamworker_jobs_skipped_total",
            "Entries read but not run (cancelled, expired, done, dead)",
            ["reason"],
            registry=r,
        )
        self.reclaimed = Counter(
            "streamworker_jobs_reclaimed_total",
            "Entries taken over from dead workers by XAUTOCLAIM",
            registry=r,
        )
        self.dead_lettered = Counter(
            "streamworker_jobs_dead_lettered_total",
            "Jobs moved to the dead-letter stream",
            registry=r,
        )
        self.tokens = Counter(
            "streamworker_generation_tokens_total", "Tokens generated", registry=r
        )
        self.ttft = Histogram(
            "streamworker_time_to_first_token_seconds",
            "From job start on the worker to its first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "streamworker_request_queue_time_seconds",
            "From enqueue to the job's first start",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "streamworker_e2e_request_latency_seconds",
            "From enqueue to the job's end",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "streamworker_queue_wait_seconds",
            "From enqueue to the job's first start, by API key and service tier",
            ["key", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.key_tokens = Counter(
            "streamworker_key_generation_tokens_total",
            "Tokens generated, by the API key that queued the job",
            ["key"],
            registry=r,
        )
        self.inter_token = Histogram(
            "streamworker_inter_token_latency_seconds",
            "Mean time between tokens of a job",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )

    def watch_engine(self, engine: object) -> None:
        """Export the engine's own counters, read when scraped: prompt tokens
        that looked for a cached prefix, those the prefix cache supplied,
        and those prefilled (vLLM's prefix_cache_queries and _hits)."""
        registry = self.registry

        class EngineCounters:
            def collect(self) -> Iterator[CounterMetricFamily]:
                for name, attr, doc in ENGINE_COUNTERS:
                    value = getattr(engine, attr, None)
                    if isinstance(value, int):
                        yield CounterMetricFamily(name, doc, value=value)

        registry.register(EngineCounters())  # type: ignore[arg-type]

    def serve(
        self,
        host: str,
        port: int,
        health: Callable[[], str | None] | None = None,
        *,
        search: int = 0,
    ) -> int:
        """/metrics, and /health for the orchestrator: `health` returns None
        when the worker is fine, else why not (-> 503). Returns the port
        served (0: none, for port 0). With `search`, a port another process
        has is passed over for the next of `search` ports after it, and past
        those for one the OS picks; without it, OSError."""
        if not port:
            return 0
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO") != "/health":
                return metrics_app(environ, start_response)
            problem = health() if health is not None else None
            status = "503 Service Unavailable" if problem else "200 OK"
            start_response(status, [("Content-Type", "application/json")])
            return [
                json.dumps(
                    {"status": "unavailable" if problem else "ok", "reason": problem}
                ).encode()
            ]

        server = _bind(host, port, app, search)
        if server.server_port != port:
            log.warning(
                "metrics port %d on %s is in use by another process: serving on %d instead",
                port,
                host,
                server.server_port,
            )
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server.server_port

    def job_started(
        self, attempt: int, created_at_ms: int, owner: str = "", tier: str = ""
    ) -> None:
        if attempt <= 1:
            waited = max(0.0, time.time() - created_at_ms / 1000)
            self.queue_time.observe(waited)
            self.queue_wait.labels(key_label(owner), tier or "default").observe(waited)

    def job_finished(
        self,
        status: str,
        new_tokens: int,
        t0: float,
        first_token: float | None,
        created_at_ms: int,
    ) -> None:
        self.jobs.labels(status).inc()
        self.tokens.inc(new_tokens)
        self.key_tokens.labels(key_label(job_owner.get())).inc(new_tokens)
        now = time.monotonic()
        if first_token is not None:
            self.ttft.observe(first_token - t0)
            if new_tokens > 1:
                self.inter_token.observe((now - first_token) / (new_tokens - 1))
        self.e2e.observe(max(0.0, time.time() - created_at_ms / 1000))

    def job_skipped(self, reason: str) -> None:
        self.skipped.labels(reason).inc()


def _bind(host: str, port: int, app: Any, search: int) -> WSGIServer:
    # Port 0 last: the OS picks a free one, so a crowded host still gets
    # metrics, on a port the log and the registry name.
    candidates = [p for p in range(port, port + search + 1) if p <= 65535]
    if search:
        candidates.append(0)

    def bind(candidate: int) -> WSGIServer:
        return make_server(host, candidate, app, ThreadingWSGIServer, handler_class=_SilentHandler)

    for candidate in candidates[:-1]:
        try:
            return bind(candidate)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    return bind(candidates[-1])
