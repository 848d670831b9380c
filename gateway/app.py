"""create_app(settings): routes, middlewares, and the resources they share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway import completions_api, jobs_api, state
from gateway.context_window import ContextWindow
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.models import ModelDirectory
from gateway.openai_types import ModelCard, ModelList
from gateway.security import Hardening
from gateway.settings import GatewaySettings
from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import connect
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings, RedisSettings


async def list_models(request: web.Request) -> web.Response:
    st = state.of(request.app)
    workers = await st.models.workers()
    created: dict[str, int] = {}
    for w in workers:
        created[w.model] = min(created.get(w.model, w.started_at), w.started_at)
    body = ModelList(data=[ModelCard(id=m, created=c // 1000) for m, c in sorted(created.items())])
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers. No dependencies, by design."""
    return web.json_response({"status": "ok"})


async def metrics_handler(request: web.Request) -> web.Response:
    st = state.of(request.app)
    return await st.metrics.scrape(st.models, st.jobs)


READY_TIMEOUT_SECONDS = 2.0


async def ready(request: web.Request) -> web.Response:
    """Readiness: Redis answers and at least one live worker serves a model."""
    st = state.of(request.app)
    try:
        # Bounded: the client's reconnect backoff must not make the probe
        # itself time out while Redis is down.
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await st.redis.ping()
            workers = await st.models.workers()
    except (RedisError, OSError, TimeoutError) as exc:
        return web.json_response(
            {"status": "unavailable", "reason": f"redis: {type(exc).__name__}"}, status=503
        )
    if not st.hub.connected:
        return web.json_response(
            {"status": "unavailable", "reason": "pub/sub reconnecting"}, status=503
        )
    if not workers:
        return web.json_response({"status": "unavailable", "reason": "no live worker"}, status=503)
    return web.json_response(
        {
            "status": "ready",
            "models": sorted({w.model for w in workers}),
            "workers": len(workers),
            "capacity": sum(w.slots for w in workers),
        }
    )


def create_app(
    settings: GatewaySettings,
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
) -> web.Application:
    # Raises auth.KeyringError when API keys are required but not configured.
    hardening = Hardening(settings)
    # Made before the app: the metrics middleware counts into it from the
    # first request, and the state shares it with the handlers.
    metrics = GatewayMetrics()
    app = web.Application(
        middlewares=hardening.middlewares(metrics),
        client_max_size=settings.max_body_bytes,
    )
    hardening.install(app)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        redis = connect(redis_settings)
        hub = Hub(redis)
        scripts = Scripts(redis)
        app[state.STATE] = state.GatewayState(
            settings=settings,
            queue_settings=queue_settings,
            redis=redis,
            scripts=scripts,
            jobs=JobClient(redis, scripts, queue_settings),
            hub=hub,
            models=ModelDirectory(redis),
            metrics=metrics,
            context_window=ContextWindow(),
        )
        listener = asyncio.create_task(hub.run(), name="pubsub-hub")
        # Serve even if Redis is down at start: /ready says so until it is up.
        await hub.wait_connected(5)
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(listener, timeout=5)
            await redis.aclose()

    app.cleanup_ctx.append(resources)
    completions_api.add_routes(app)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_handler)
    jobs_api.add_routes(app)
    return app
