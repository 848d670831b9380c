"""What the gateway's handlers share, under one typed AppKey."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.hub import Hub
    from gateway.metrics import GatewayMetrics
    from gateway.models import ModelDirectory
    from gateway.settings import GatewaySettings
    from streamworker.protocol.client import JobClient
    from streamworker.protocol.scripts import Scripts
    from streamworker.protocol.settings import QueueSettings


@dataclass(eq=False)
class GatewayState:
    settings: GatewaySettings
    queue_settings: QueueSettings
    redis: Redis
    scripts: Scripts
    jobs: JobClient
    hub: Hub
    models: ModelDirectory
    metrics: GatewayMetrics


STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)


def of(app: web.Application) -> GatewayState:
    return app[STATE]
