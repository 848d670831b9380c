"""Operator commands: inspect the queue, list and replay dead letters."""

from __future__ import annotations

import argparse
import time

from streamworker import keys
from streamworker.connections import connect
from streamworker.queue import Queue, model_keys
from streamworker.registry import live_workers
from streamworker.settings import QueueSettings, RedisSettings


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _models(queue: Queue, only: str | None) -> list[str]:
    if only:
        return [only]
    return sorted(_s(m) for m in await queue.redis.smembers(keys.MODELS))


async def inspect(queue: Queue) -> None:
    r = queue.redis
    for model in await _models(queue, None):
        k = model_keys(model)
        print(f"== model {model}  stream {k.stream}")
        if not await r.exists(k.stream):
            print("   (no stream)")
            continue
        info = await r.xinfo_stream(k.stream)
        print(f"   XINFO STREAM: length={info['length']} last-id={_s(info['last-generated-id'])}")
        for g in await r.xinfo_groups(k.stream):
            print(f"   group {_s(g['name'])}: consumers={g['consumers']} pending={g['pending']}"
                  f" last-delivered={_s(g['last-delivered-id'])} lag={g.get('lag')}")
            for c in await r.xinfo_consumers(k.stream, g["name"]):
                print(f"     consumer {_s(c['name'])}: pending={c['pending']} "
                      f"idle={c['idle']}ms")
        pending = await r.xpending_range(k.stream, keys.GROUP, "-", "+", 50)
        for p in pending:
            print(f"     pending {_s(p['message_id'])} owner={_s(p['consumer'])} "
                  f"idle={p['time_since_delivered']}ms deliveries={p['times_delivered']}")
        print(f"   queued jobs: {int(await r.get(k.queued) or 0)}   "
              f"dead letters: {await r.xlen(k.dead)}")
    workers = await live_workers(r)
    print(f"== live workers: {len(workers)}")
    now = time.time() * 1000
    for w in workers:
        print(f"   {w.id}: model={w.model} slots={w.slots} active={w.active} gpu={w.gpu or '-'} "
              f"engine={w.engine} host={w.host} pid={w.pid} "
              f"heartbeat {int(now - w.heartbeat_at)}ms ago")


async def dead(queue: Queue, args: argparse.Namespace) -> int:
    models = await _models(queue, args.model)
    if args.dead_command == "list":
        for model in models:
            for entry_id, f in await queue.dead(model):
                print(f"{model}\t{entry_id}\t{f.get('job_id')}\tattempts={f.get('attempts')}\t"
                      f"{f.get('reason')}")
        return 0
    missing = 0
    for model in models:
        ids = args.entry_ids
        if ids == ["all"]:
            ids = [i for i, _ in await queue.dead(model, count=100000)]
        for dead_id in ids:
            job_id = await queue.replay(model, dead_id)
            if job_id is None:
                missing += 1
            else:
                print(f"replayed {dead_id} -> job {job_id}")
    return 1 if missing and args.entry_ids != ["all"] and len(models) == 1 else 0


async def dispatch(
    args: argparse.Namespace, redis_settings: RedisSettings, queue_settings: QueueSettings
) -> int:
    redis = connect(redis_settings)
    queue = Queue(redis, queue_settings)
    try:
        if args.command == "inspect":
            await inspect(queue)
            return 0
        return await dead(queue, args)
    finally:
        await redis.aclose()
