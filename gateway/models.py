"""Which models can take work now: read from the worker registry, cached
briefly so a burst of requests costs one registry read, not one each."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.errors import ModelNotFound, ServiceUnavailable
from streamworker.protocol import keys
from streamworker.protocol.registry import WorkerInfo, live_workers

if TYPE_CHECKING:
    from redis.asyncio import Redis

CACHE_SECONDS = 1.0


class ModelDirectory:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._workers: list[WorkerInfo] = []
        self._at = 0.0

    async def workers(self) -> list[WorkerInfo]:
        if time.monotonic() - self._at > CACHE_SECONDS:
            self._workers = await live_workers(self.redis)
            self._at = time.monotonic()
        return self._workers

    async def capacity(self) -> dict[str, int]:
        """model -> slots across its live workers."""
        out: dict[str, int] = {}
        for w in await self.workers():
            out[w.model] = out.get(w.model, 0) + w.slots
        return out

    async def require(self, model: str) -> int:
        """The model's live capacity, or 404 (never served) / 503 (no live worker)."""
        capacity = (await self.capacity()).get(model, 0)
        if capacity:
            return capacity
        if await self.redis.sismember(keys.MODELS, model):
            raise ServiceUnavailable(
                f"no worker serving model '{model}' is alive; try again later",
                code="model_unavailable",
                headers={"Retry-After": "5"},
            )
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
