"""python -m streamworker [run | inspect | dead list | dead replay ID | capacity]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import anyio

from streamworker import capacity as capacity_mod
from streamworker.engines import load_engine
from streamworker.heartbeat import Heartbeat, engine_alive
from streamworker.metrics import WorkerMetrics
from streamworker.protocol import registry
from streamworker.protocol.connections import connect
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.logs import setup_logging
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import (
    QueueSettings,
    RedisSettings,
    SettingsError,
    from_env,
)
from streamworker.semaphore import GpuSemaphore
from streamworker.settings import EngineSettings, QdrantSettings, WorkerSettings
from streamworker.worker import Worker

log = logging.getLogger("streamworker")


async def run_worker(
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    engine_settings: EngineSettings,
    worker_settings: WorkerSettings,
) -> int:
    cap = capacity_mod.resolve(worker_settings.worker_concurrency, engine_settings)
    log.info("capacity: %d slot(s) on %s (%s)", cap.slots, cap.gpu, cap.reason)
    engine_settings.slots = cap.slots
    engine = await anyio.to_thread.run_sync(load_engine, engine_settings)
    metrics = WorkerMetrics()
    metrics.capacity.set(cap.slots)
    redis = connect(redis_settings)
    consumer = JobConsumer(
        redis,
        Scripts(redis),
        queue_settings,
        model=engine_settings.model_name,
        name=worker_settings.name(),
    )
    # Every worker process on this GPU (or CPU host) shares one semaphore.
    semaphore = GpuSemaphore(
        redis,
        worker_settings.worker_semaphore_key or cap.gpu,
        cap.slots,
        owner=worker_settings.name(),
        lease_seconds=worker_settings.worker_semaphore_lease_seconds,
        poll_seconds=min(0.25, worker_settings.worker_block_ms / 1000),
    )

    async def live_ids() -> set[str]:
        return {w.id for w in await registry.live_workers(redis)}

    worker = Worker(
        consumer,
        engine,
        slots=cap.slots,
        block_ms=worker_settings.worker_block_ms,
        shutdown_grace=worker_settings.worker_shutdown_grace_seconds,
        metrics=metrics,
        semaphore=semaphore,
        live_workers=live_ids,
    )
    heartbeat = Heartbeat(
        redis,
        engine,
        worker_id=consumer.name,
        model=consumer.model,
        slots=cap.slots,
        active=lambda: len(worker.active),
        interval=worker_settings.worker_heartbeat_seconds,
        gpu=cap.gpu,
        engine_name=engine_settings.engine,
        chat_format=engine_settings.chat_format,
    )
    metrics.serve(
        worker_settings.worker_metrics_host,
        worker_settings.worker_metrics_port,
        health=heartbeat.health,
    )
    stop = anyio.Event()
    engine_died = False
    async with anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for signum in received:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    stop.set()
                    return

        async def watchdog() -> None:
            # An engine that dies under a live process: drain (hand jobs
            # back) and exit non-zero so the supervisor restarts us.
            nonlocal engine_died
            while True:  # polled: engines have no death callback
                await anyio.sleep(1)
                if not engine_alive(engine):
                    break
            log.error("engine stopped: draining and exiting")
            engine_died = True
            stop.set()

        tg.start_soon(signals)
        tg.start_soon(watchdog)
        tg.start_soon(heartbeat.run)
        log.info(
            "worker %s serving %s with engine %s",
            worker.name,
            worker.model,
            engine_settings.engine,
        )
        await worker.run(stop=stop)
        tg.cancel_scope.cancel()
    await heartbeat.withdraw()
    await redis.aclose()
    engine.close()
    log.info("worker %s stopped after %d job(s)", worker.name, worker.jobs_done)
    return 1 if engine_died else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamworker", description=__doc__)
    parser.add_argument("--redis-url", help="REDIS_URL")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a worker (the default)")
    run.add_argument("--engine", help="ENGINE: llama, batched or echo")
    run.add_argument("--model-path", help="MODEL_PATH")
    run.add_argument("--model-name", help="MODEL_NAME")
    run.add_argument("--concurrency", help="WORKER_CONCURRENCY")
    run.add_argument("--name", help="WORKER_NAME")
    sub.add_parser("inspect", help="streams, groups, consumers, pending, workers")
    sub.add_parser("capacity", help="how WORKER_CONCURRENCY=auto would size this host")
    sub.add_parser("qdrant", help="check the retrieval store (QDRANT_* settings)")
    dead = sub.add_parser("dead", help="dead-lettered jobs")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list")
    dead_list.add_argument("--model")
    replay = dead_sub.add_parser("replay")
    replay.add_argument("entry_ids", nargs="+", help="dead-letter entry ids (or 'all')")
    replay.add_argument("--model")
    args = parser.parse_args(argv)
    command = args.command or "run"
    try:
        redis_settings = from_env(RedisSettings, redis_url=args.redis_url)
        queue_settings = from_env(QueueSettings)
        if command in ("run", "capacity"):
            engine_settings = from_env(
                EngineSettings,
                engine=getattr(args, "engine", None),
                model_path=getattr(args, "model_path", None),
                model_name=getattr(args, "model_name", None),
            )
            worker_settings = from_env(
                WorkerSettings,
                worker_concurrency=getattr(args, "concurrency", None),
                worker_name=getattr(args, "name", None),
            )
            if command == "capacity":
                # Show how this host would be sized, with the inputs used.
                print(capacity_mod.report("auto", engine_settings))
                return 0
            capacity_mod.resolve(worker_settings.worker_concurrency, engine_settings)
    except (SettingsError, ValueError) as exc:
        print(f"streamworker: bad setting: {exc}", file=sys.stderr)
        return 2
    if command == "qdrant":
        try:
            qdrant_settings = from_env(QdrantSettings)
        except SettingsError as exc:
            print(f"streamworker: bad setting: {exc}", file=sys.stderr)
            return 2
        from streamworker import cli

        return anyio.run(cli.qdrant_check, qdrant_settings)
    setup_logging("streamworker")
    if command == "run":
        return anyio.run(
            run_worker,
            redis_settings,
            queue_settings,
            engine_settings,
            worker_settings,
            backend_options={"use_uvloop": True},
        )
    from streamworker import cli

    return anyio.run(cli.dispatch, args, redis_settings, queue_settings)


if __name__ == "__main__":
    sys.exit(main())
