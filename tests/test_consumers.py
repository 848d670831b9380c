"""Gone consumers are removed only once they own no pending entry."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from streamworker.protocol.client import JobClient
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings
from streamworker.protocol.wire import GenerationParams, JobRequest, Message


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_prune_keeps_consumers_with_pending_entries(redis_url):
    redis = Redis.from_url(redis_url)
    settings = QueueSettings(job_lease_seconds=0.1)
    scripts = Scripts(redis)
    me = JobConsumer(redis, scripts, settings, model="m", name="me")
    dead = JobConsumer(redis, scripts, settings, model="m", name="dead-with-work")
    try:
        await me.ensure_group()
        req = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=1))
        await JobClient(redis, scripts, settings).enqueue("m", "j1", req)
        (entry,) = await dead.read(1, None)
        await redis.xgroup_createconsumer("sw:{m}:jobs", "workers", "dead-idle")  # owns nothing
        removed = await me.prune_consumers(live={"me"}, idle_ms=0)
        assert removed == ["dead-idle"]
        names = {c["name"] for c in await redis.xinfo_consumers("sw:{m}:jobs", "workers")}
        assert names == {b"dead-with-work"}
        # Once its entry is claimed by someone else, it can go too.
        await anyio.sleep(0.15)  # past the lease
        (taken,) = await me.reclaim(1) or [None]
        assert taken is not None and taken.entry_id == entry.entry_id
        assert "dead-with-work" in await me.prune_consumers(live={"me"}, idle_ms=0)
    finally:
        await redis.aclose()
