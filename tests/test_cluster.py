"""The protocol on a real Redis Cluster (three masters, three replicas): every
Lua script and every multi-key step stays in one slot, models spread over
the masters, and job events travel on the owner's shard channel only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from redis.crc import key_slot

from gateway.hub import RESYNC, Hub
from gateway.ratelimit import admit
from streamworker.cli import job_counts
from streamworker.protocol import keys, registry
from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import confirm, connect, is_cluster
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.keys import model_keys
from streamworker.protocol.registry import WorkerInfo
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings, RedisSettings
from streamworker.protocol.wire import End, GenerationParams, JobRequest, LogEntry, Message
from streamworker.semaphore import GpuSemaphore
from tests.harness import RedisClusterServer, wait_for


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    if not redis_cluster.healthy():
        redis_cluster.start()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
async def rc(cluster: RedisClusterServer) -> AsyncIterator[Any]:
    client = await connect(RedisSettings(redis_url=cluster.url))
    yield client
    await client.aclose()


def models_on_each_master(cluster: RedisClusterServer) -> list[str]:
    """One model name per master, so a test touches every shard."""
    found: dict[int, str] = {}
    for n in range(200):
        name = f"model-{n}"
        found.setdefault(cluster.owner(keys.tag(name)), name)
        if len(found) == cluster.masters:
            break
    return list(found.values())


class Recorder:
    """Stands in for one registered script: checks that its keys share one
    slot before Redis does (so a failure names the script), and notes that
    it ran."""

    def __init__(self, name: str, script: Any, ran: set[str]) -> None:
        self.name = name
        self.script = script
        self.sha = script.sha
        self.ran = ran

    async def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) <= 1, f"{self.name} touches keys in slots {slots}: {keys}"
        self.ran.add(self.name)
        return await self.script(keys=keys, args=args, client=client)


def recorded(scripts: Scripts, ran: set[str]) -> Scripts:
    for name, script in list(vars(scripts).items()):
        setattr(scripts, name, Recorder(name, script, ran))
    return scripts


@pytest.mark.anyio
async def test_every_script_runs_in_one_slot(rc: Any) -> None:
    """Each script once through the code that calls it, on a cluster: the
    recorder and Redis 7 (which refuses a script touching a second slot, even
    a key it did not declare) both check the slot; the run must cover every
    script the protocol registers."""
    assert is_cluster(rc)
    ran: set[str] = set()
    scripts = recorded(Scripts(rc), ran)
    settings = QueueSettings(job_max_attempts=1, job_lease_seconds=5)
    client = JobClient(rc, scripts, settings)
    model = "slot-check"
    a = JobConsumer(rc, scripts, settings, model=model, name="A")
    await a.ensure_group()
    request = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=2))

    # A job's whole life: enqueue, position, start, append, refresh, finish.
    await client.enqueue(model, "job-1", request, idempotency_key="k1", owner="o")
    assert await client.position(model, "job-1") == 1
    (entry,) = await a.read(1, None)
    started = await a.start(entry)
    assert not isinstance(started, str)
    assert await a.append("job-1", started.attempt, 0, [LogEntry(1, "x")]) == "ok"
    assert await a.refresh([entry.entry_id]) == set()
    assert await a.finish(entry, started.attempt, End(status="completed"), {"text": "x"})

    # Prune a consumer that owns nothing (the queue is empty now).
    await rc.xgroup_createconsumer(model_keys(model).stream, keys.GROUP, "B")
    assert "B" in await a.prune_consumers({"A"}, idle_ms=0)

    # A failure at the last attempt dead-letters; replay brings it back.
    await client.enqueue(model, "job-2", request)
    (entry,) = await a.read(1, None)
    started = await a.start(entry)
    assert not isinstance(started, str)
    assert await a.requeue(entry, started.attempt, error="boom") == "dead"
    ((dead_id, _),) = await client.dead(model)
    assert await client.replay(model, dead_id) == "job-2"

    # Cancel a queued job.
    await client.enqueue(model, "job-3", request)
    assert await client.cancel(model, "job-3") == "cancelled"

    # The gateway's rate limit and the workers' GPU semaphore.
    assert await admit(scripts, "key-1", rpm=10, tpm=0, cost_tokens=1) is not None
    sem = GpuSemaphore(rc, "gpu-0", 2, owner="A")
    sem._acquire = Recorder("semaphore_acquire", sem._acquire, ran)
    sem._renew = Recorder("semaphore_renew", sem._renew, ran)
    async with sem.grant(1) as grant:
        assert len(grant) == 1
        grant.assign("entry-1")
    assert await sem.renew() == 0

    assert ran == set(vars(Scripts(rc))), f"not run on the cluster: {set(vars(Scripts(rc))) - ran}"


@pytest.mark.anyio
async def test_global_keys_across_masters(rc: Any, cluster: RedisClusterServer) -> None:
    """Steps that read many models or workers (their keys on different
    masters) are per-key commands in a pipeline, never one multi-key command."""
    models = models_on_each_master(cluster)
    assert len({cluster.owner(keys.tag(m)) for m in models}) == cluster.masters
    scripts = Scripts(rc)
    client = JobClient(rc, scripts, QueueSettings())
    request = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=1))
    for i, model in enumerate(models):
        await JobConsumer(rc, scripts, QueueSettings(), model=model, name="w").ensure_group()
        for n in range(i + 1):
            await client.enqueue(model, f"{model}-{n}", request)
        info = WorkerInfo(id=f"w-{model}", model=model, host="h", pid=1, slots=1, active=0)
        await registry.publish(rc, info, 10_000)
    assert await client.queued_depths() == {m: i + 1 for i, m in enumerate(models)}
    assert {w.model for w in await registry.live_workers(rc)} == set(models)
    # A job id finds its model with a single-key GET, whichever node holds it.
    assert await client.model_of(f"{models[-1]}-0") == models[-1]
    # The operator's SCAN of a model's records reaches the master that has them.
    assert await job_counts(rc, model_keys(models[-1])) == {"queued": len(models)}


@pytest.mark.anyio
async def test_hub_listens_on_each_shard(rc: Any, cluster: RedisClusterServer) -> None:
    """One connection per master; an event published on a job's shard
    channel reaches that job's queue and no other."""
    hub = Hub(rc, RedisSettings(redis_url=cluster.url))
    runner = asyncio.create_task(hub.run())
    try:
        assert await hub.wait_connected(10)
        assert len(hub._shards) == cluster.masters
        channels = [model_keys(m).channel("job") for m in models_on_each_master(cluster)]
        async with (
            hub.subscribe(channels[0]) as q0,
            hub.subscribe(channels[1]) as q1,
            hub.subscribe(channels[2]) as q2,
        ):
            for i, channel in enumerate(channels):
                await rc.execute_command("SPUBLISH", channel, f"event-{i}")
            with anyio.fail_after(5):
                got = [await q.get() for q in (q0, q1, q2)]
            assert got == [b"event-0", b"event-1", b"event-2"]
            assert all(q.empty() for q in (q0, q1, q2))
            # Each channel is subscribed on its owner only.
            for channel in channels:
                owner = cluster.node(cluster.owner(channel))
                assert owner.cli("PUBSUB", "SHARDNUMSUB", channel).split()[1] == "1"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert RESYNC not in got


@pytest.mark.anyio
async def test_confirm_waits_for_the_owners_replica(rc: Any, cluster: RedisClusterServer) -> None:
    """REDIS_WAIT_REPLICAS' WAIT runs on the master owning the job's slot,
    after a write on the same connection, so its count means something."""
    for model in models_on_each_master(cluster):
        assert await confirm(rc, [model_keys(model).job("j"), keys.job_model("j")], 1, 2000) == 1


def node_id(cluster: RedisClusterServer, port: int) -> str:
    return cluster.node(port).cli("CLUSTER", "MYID").strip()


def hand_over(
    cluster: RedisClusterServer, slot: int, to: int, frm: int, *, wait: bool = True
) -> None:
    """Move an empty slot from master `frm` to master `to`, as the last step
    of a resharding does, and wait until both of them agree (the other nodes
    learn it by gossip, or from a -MOVED)."""
    to_id, frm_id = node_id(cluster, to), node_id(cluster, frm)
    # The documented order: importing, migrating, then the new owner first
    # (which, importing, takes a new config epoch so its claim wins).
    cluster.node(to).cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", frm_id)
    cluster.node(frm).cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", to_id)
    cluster.node(to).cli("CLUSTER", "SETSLOT", str(slot), "NODE", to_id)
    cluster.node(frm).cli("CLUSTER", "SETSLOT", str(slot), "NODE", to_id)

    def agreed() -> bool:
        return all(
            to_id in _owner_line(cluster.node(port).cli("CLUSTER", "NODES"), slot)
            for port in (to, frm)
        )

    if wait:
        wait_for(agreed, timeout=30, what=f"old and new owner agree slot {slot} moved")


def _owner_line(nodes: str, slot: int) -> str:
    for line in nodes.splitlines():
        for span in line.split()[8:]:
            first, _, last = span.partition("-")
            if first.isdigit() and int(first) <= slot <= int(last or first):
                return line
    return ""


@pytest.mark.anyio
async def test_hub_follows_a_slot_that_moves(rc: Any, cluster: RedisClusterServer) -> None:
    """A job's slot moves to another master (a resharding): Redis drops the
    shard channel's subscribers on the old owner, the hub rebuilds on the new
    one, RESYNCs the queue (so its relay reads the log) and live events
    flow again."""
    model = models_on_each_master(cluster)[0]
    channel = model_keys(model).channel("job")
    slot = key_slot(channel.encode())
    source = cluster.owner(channel)
    target = next(p for p in cluster.master_ports() if p != source)
    hub = Hub(rc, RedisSettings(redis_url=cluster.url))
    runner = asyncio.create_task(hub.run())
    try:
        assert await hub.wait_connected(10)
        async with hub.subscribe(channel) as queue:
            before = hub.rebuilds
            # The slot holds no key (flushed): handing it over is SETSLOT alone.
            hand_over(cluster, slot, target, source)
            with anyio.fail_after(10):
                assert await queue.get() == RESYNC
            assert hub.rebuilds > before
            await rc.execute_command("SPUBLISH", channel, "after-the-move")
            with anyio.fail_after(5):
                assert await queue.get() == b"after-the-move"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        # Give the slot back, so later tests see the usual layout.
        hand_over(cluster, slot, source, target, wait=False)
