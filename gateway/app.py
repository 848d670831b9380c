"""create_app(settings): routes, middlewares, and the resources they share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import RedisError

from gateway import (
    batch_runner,
    batches_api,
    completions_api,
    documents_api,
    embeddings_api,
    files_api,
    jobs_api,
    models_api,
    rag,
    search_api,
    state,
    tokenize_api,
    webhooks_api,
)
from gateway.context_window import ContextWindow
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.models import ModelDirectory
from gateway.retrieval import resources as retrieval
from gateway.retrieval.settings import RetrievalSettings
from gateway.security import Hardening
from gateway.settings import GatewaySettings
from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import connect
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings, RedisSettings, from_env
from streamworker.qdrant import QdrantSettings


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
    retrieval_settings: RetrievalSettings | None = None,
    qdrant_settings: QdrantSettings | None = None,
) -> web.Application:
    # Unset: from the environment (raises SettingsError on a bad value).
    retrieval_settings = retrieval_settings or from_env(RetrievalSettings)
    qdrant_settings = qdrant_settings or from_env(QdrantSettings)
    # Raises auth.KeyringError when API keys are required but not configured.
    hardening = Hardening(settings)
    # Made before the app: the metrics middleware counts into it from the
    # first request, and the state shares it with the handlers.
    metrics = GatewayMetrics()
    app = web.Application(
        # Retrieval-augmented chat rewrites a request after auth and errors.
        middlewares=[*hardening.middlewares(metrics), rag.make_rag_middleware()],
        client_max_size=settings.max_body_bytes,
    )
    hardening.install(app)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        redis = await connect(redis_settings)
        hub = Hub(redis, redis_settings)
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
            wait_replicas=redis_settings.redis_wait_replicas,
            wait_timeout_ms=redis_settings.redis_wait_timeout_ms,
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
    # After Redis: the store is opened by this process alone, and closed
    # (an embedded path's lock released) when it stops.
    app.cleanup_ctx.append(retrieval.install(app, retrieval_settings, qdrant_settings))
    # After both: batches are advanced (and webhooks sent) by every process.
    app.cleanup_ctx.append(batch_runner.install)
    completions_api.add_routes(app)
    models_api.add_routes(app)
    tokenize_api.add_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_handler)
    jobs_api.add_routes(app)
    embeddings_api.add_routes(app)
    documents_api.add_routes(app, retrieval_settings.api_prefix)
    search_api.add_routes(app, retrieval_settings.api_prefix)
    files_api.add_routes(app)
    batches_api.add_routes(app)
    webhooks_api.add_routes(app)
    return app
