"""What the gateway's handlers share, under one typed AppKey."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from prometheus_client import Counter
    from redis.asyncio import Redis

    from gateway.context_window import ContextWindow
    from gateway.hub import Hub
    from gateway.models import ModelDirectory
    from gateway.settings import GatewaySettings
    from streamworker.protocol.client import JobClient
    from streamworker.protocol.scripts import Scripts
    from streamworker.protocol.settings import QueueSettings


class Metrics(Protocol):
    """What the handlers record and serve: gateway/metrics.py's
    GatewayMetrics, named by its shape so that the state, which nearly every
    module reads, needs nothing from that module."""

    rejected: Counter

    def first_token(self, request: web.Request) -> None: ...

    async def scrape(self, models: ModelDirectory, jobs: JobClient) -> web.Response: ...


@dataclass(eq=False)
class GatewayState:
    settings: GatewaySettings
    queue_settings: QueueSettings
    redis: Redis
    scripts: Scripts
    jobs: JobClient
    hub: Hub
    models: ModelDirectory
    metrics: Metrics
    context_window: ContextWindow
    # REDIS_WAIT_REPLICAS: how many replicas must hold an accepted job
    # before the client hears of it (0: the master's word is enough).
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000


STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)


def of(app: web.Application) -> GatewayState:
    return app[STATE]
