"""Gone consumers are removed only once they own no pending entry."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from streamworker.engines.base import GenerationParams, Message
from streamworker.jobs import JobRequest
from streamworker.queue import Queue
from streamworker.settings import QueueSettings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_prune_keeps_consumers_with_pending_entries(redis_url):
    redis = Redis.from_url(redis_url)
    q = Queue(redis, QueueSettings(job_lease_seconds=0.1))
    try:
        await q.ensure_group("m")
        req = JobRequest([Message("user", "hi")], GenerationParams(max_tokens=1))
        await q.enqueue("m", "j1", req)
        (entry,) = await q.read("m", "dead-with-work", 1, None)
        await redis.xgroup_createconsumer("sw:{m}:jobs", "workers", "dead-idle")  # owns nothing
        removed = await q.prune_consumers("m", live={"me"}, idle_ms=0)
        assert removed == ["dead-idle"]
        names = {c["name"] for c in await redis.xinfo_consumers("sw:{m}:jobs", "workers")}
        assert names == {b"dead-with-work"}
        # Once its entry is claimed by someone else, it can go too.
        await anyio.sleep(0.15)  # past the lease
        (taken,) = await q.reclaim("m", "me", 1) or [None]
        assert taken is not None and taken.entry_id == entry.entry_id
        assert "dead-with-work" in await q.prune_consumers("m", live={"me"}, idle_ms=0)
    finally:
        await redis.aclose()
