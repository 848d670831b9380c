"""Operator commands: inspect the queue, list and replay dead letters, check
the retrieval store, ingest files through the gateway."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from streamworker.protocol import keys
from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import connect
from streamworker.protocol.keys import model_keys
from streamworker.protocol.registry import live_workers
from streamworker.protocol.scripts import Scripts
from streamworker.semaphore import holders

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from streamworker.protocol.settings import QueueSettings, RedisSettings
    from streamworker.settings import QdrantSettings


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _models(r: Redis, only: str | None) -> list[str]:
    if only:
        return [only]
    return sorted(_s(m) for m in await r.smembers(keys.MODELS))


async def inspect(r: Redis) -> None:
    for model in await _models(r, None):
        k = model_keys(model)
        print(f"== model {model}  stream {k.stream}")
        if not await r.exists(k.stream):
            print("   (no stream)")
            continue
        info = await r.xinfo_stream(k.stream)
        print(f"   XINFO STREAM: length={info['length']} last-id={_s(info['last-generated-id'])}")
        for g in await r.xinfo_groups(k.stream):
            print(
                f"   group {_s(g['name'])}: consumers={g['consumers']} pending={g['pending']}"
                f" last-delivered={_s(g['last-delivered-id'])} lag={g.get('lag')}"
            )
            for c in await r.xinfo_consumers(k.stream, g["name"]):
                print(f"     consumer {_s(c['name'])}: pending={c['pending']} idle={c['idle']}ms")
        pending = await r.xpending_range(k.stream, keys.GROUP, "-", "+", 50)
        for p in pending:
            print(
                f"     pending {_s(p['message_id'])} owner={_s(p['consumer'])} "
                f"idle={p['time_since_delivered']}ms deliveries={p['times_delivered']}"
            )
        print(
            f"   queued jobs: {int(await r.get(k.queued) or 0)}   "
            f"dead letters: {await r.xlen(k.dead)}"
        )
        counts = await job_counts(r, k)
        print(
            "   job records by status: "
            + (", ".join(f"{s}={n}" for s, n in sorted(counts.items())) or "none")
        )
    workers = await live_workers(r)
    print(f"== live workers: {len(workers)}")
    now = time.time() * 1000
    for w in workers:
        print(
            f"   {w.id}: model={w.model} slots={w.slots} active={w.active} gpu={w.gpu or '-'} "
            f"engine={w.engine} host={w.host} pid={w.pid} "
            f"heartbeat {int(now - w.heartbeat_at)}ms ago"
        )
    for gpu in sorted({w.gpu for w in workers if w.gpu}):
        held = await holders(r, gpu)
        print(
            f"== GPU semaphore {keys.semaphore(gpu)}: {len(held)} slot(s) held"
            + "".join(f"\n   {token} lease ends in {int(expiry - now)}ms" for token, expiry in held)
        )


async def job_counts(r: Redis, k: keys.ModelKeys) -> dict[str, int]:
    """Job records by status. A SCAN over the model's records: O(records),
    fine for an operator's command and never on a request path (the gateway
    reads only the O(1) queued counter). Records expire JOB_RESULT_TTL_SECONDS
    after they end, so terminal counts cover that window."""
    counts: dict[str, int] = {}
    batch: list[bytes] = []

    async def tally() -> None:
        async with r.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.hget(key, "status")
            for status in await pipe.execute():
                if status is not None:
                    name = _s(status)
                    counts[name] = counts.get(name, 0) + 1
        batch.clear()

    async for key in r.scan_iter(match=k.job("*"), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await tally()
    if batch:
        await tally()
    return counts


async def dead(r: Redis, jobs: JobClient, args: argparse.Namespace) -> int:
    models = await _models(r, args.model)
    if args.dead_command == "list":
        for model in models:
            for entry_id, f in await jobs.dead(model):
                print(
                    f"{model}\t{entry_id}\t{f.get('job_id')}\tattempts={f.get('attempts')}\t"
                    f"{f.get('reason')}"
                )
        return 0
    missing = 0
    for model in models:
        ids = args.entry_ids
        if ids == ["all"]:
            ids = [i for i, _ in await jobs.dead(model, count=100000)]
        for dead_id in ids:
            job_id = await jobs.replay(model, dead_id)
            if job_id is None:
                missing += 1
            else:
                print(f"replayed {dead_id} -> job {job_id}")
    return 1 if missing and args.entry_ids != ["all"] and len(models) == 1 else 0


async def qdrant_check(settings: QdrantSettings) -> int:
    """Print the retrieval store's mode, address and collections; exit 1 if it
    is unreachable, 2 if ENVIRONMENT=production and the checklist fails."""
    from streamworker import qdrant

    try:
        st = await qdrant.status(settings)
    except Exception as exc:  # any transport error: report it, plainly
        print(f"qdrant: unreachable at {qdrant.address(settings)}: {type(exc).__name__}: {exc}")
        return 1
    print(f"qdrant: {st.mode} at {st.address}; collections: {', '.join(st.collections) or '-'}")
    for problem in st.problems:
        print(f"qdrant: production checklist: {problem}")
    if st.problems and os.environ.get("ENVIRONMENT") == "production":
        return 2
    return 0


def ingest(args: argparse.Namespace) -> int:
    from streamworker import ingest as ingest_mod

    return ingest_mod.main(
        args.paths, args.collection, args.url, args.api_key, prefix=args.api_prefix
    )


async def dispatch(
    args: argparse.Namespace, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> int:
    redis = await connect(redis_settings)
    try:
        if args.command == "inspect":
            await inspect(redis)
            return 0
        return await dead(redis, JobClient(redis, Scripts(redis), queue_settings), args)
    finally:
        await redis.aclose()
