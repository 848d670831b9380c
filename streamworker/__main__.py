"""python -m streamworker [run | inspect | dead list | dead replay ID | capacity]"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import msgspec
from redis.exceptions import RedisError

from streamworker import capacity as capacity_mod
from streamworker import instance
from streamworker.engines import load_engine
from streamworker.engines.embedder import Embedder
from streamworker.heartbeat import Heartbeat, WatchedEngine, engine_alive
from streamworker.metrics import WorkerMetrics
from streamworker.notify import WorkerNotifications
from streamworker.protocol import connections, registry
from streamworker.protocol.connections import connect
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.keys import model_keys
from streamworker.protocol.logs import setup_logging
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import (
    QueueSettings,
    RedisSettings,
    SettingsError,
    from_env,
)
from streamworker.retry import with_backoff
from streamworker.sdnotify import Notifier
from streamworker.semaphore import GpuSemaphore
from streamworker.settings import (
    METRICS_PORT_BASE,
    EmbeddingSettings,
    EngineSettings,
    QdrantSettings,
    WorkerSettings,
)
from streamworker.worker import Worker

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("streamworker")


async def run_worker(
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    engine_settings: EngineSettings,
    worker_settings: WorkerSettings,
    embedding_settings: EmbeddingSettings | None = None,
) -> int:
    """Take a name and a metrics port before the model loads, so a clash
    stops the start at once (SettingsError), then serve."""
    redis = await connect(redis_settings)
    try:
        lease = await instance.claim(
            redis,
            pinned=worker_settings.pinned_name(),
            ttl_seconds=worker_settings.worker_name_lease_seconds,
            instance=worker_settings.instance_number(),
        )
        try:
            return await _serve(
                redis,
                lease,
                queue_settings,
                engine_settings,
                worker_settings,
                embedding_settings or EmbeddingSettings(),
                redis_settings,
            )
        finally:
            await lease.release()
    finally:
        await redis.aclose()


def _serve_metrics(
    metrics: WorkerMetrics,
    settings: WorkerSettings,
    instance_number: int | None,
    health: Callable[[], str | None],
) -> int:
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    if port is None:
        # One port per instance number keeps each worker's scrape target in
        # place across restarts; a port someone else has is passed over.
        try:
            return metrics.serve(
                host, METRICS_PORT_BASE + (instance_number or 0), health, search=64
            )
        except OSError as exc:  # ports in use were passed over: the address is wrong
            raise SettingsError(
                f"WORKER_METRICS_HOST: cannot serve metrics on {host} ({exc.strerror})"
            ) from None
    try:
        return metrics.serve(host, port, health)
    except OSError as exc:
        raise SettingsError(
            f"WORKER_METRICS_PORT: cannot serve metrics on {host}:{port} ({exc.strerror}); "
            "choose a free port, 0 for none, or leave it unset to pick one"
        ) from None


def replicated(
    redis: Redis, model: str, settings: RedisSettings
) -> Callable[[str], Awaitable[None]]:
    """REDIS_WAIT_REPLICAS for results: WAIT on the model's master after a
    job's finish. A shortfall is logged, not fatal: the client already has
    the end, and a result lost in a failover is run again after its lease."""

    async def confirm(job_id: str) -> None:
        n, timeout = settings.redis_wait_replicas, settings.redis_wait_timeout_ms
        try:
            acked = await connections.confirm(redis, [model_keys(model).job(job_id)], n, timeout)
        except (RedisError, OSError) as exc:
            log.warning("job %s: result not confirmed on replicas (%s)", job_id, exc)
            return
        if acked < n:
            log.warning(
                "job %s: result on %d of %d replicas after %d ms", job_id, acked, n, timeout
            )

    return confirm


async def _serve(
    redis: Redis,
    lease: instance.NameLease,
    queue_settings: QueueSettings,
    engine_settings: EngineSettings,
    worker_settings: WorkerSettings,
    embedding_settings: EmbeddingSettings,
    redis_settings: RedisSettings | None = None,
) -> int:
    """Serve until SIGTERM, the engine's death (exit 1) or the loss of the
    worker's name to another process (exit 1)."""
    metrics = WorkerMetrics()
    heartbeat: Heartbeat | None = None

    def health() -> str | None:
        # While the engine loads there is no heartbeat to judge by yet.
        return heartbeat.health() if heartbeat is not None else "starting"

    metrics_port = _serve_metrics(metrics, worker_settings, lease.instance, health)
    stop = anyio.Event()
    failed = False

    def fail() -> None:
        nonlocal failed
        failed = True
        stop.set()

    # systemd's notification socket, when it runs us (Type=notify).
    notifier = Notifier.from_env()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep, fail)
        cap = capacity_mod.resolve(worker_settings.worker_concurrency, engine_settings)
        log.info("capacity: %d slot(s) on %s (%s)", cap.slots, cap.gpu, cap.reason)
        for line in capacity_mod.unused_settings(engine_settings, os.environ):
            log.warning("%s", line)
        notifier.status(f"loading {engine_settings.model_name} for {cap.slots} slot(s)")
        engine_settings = msgspec.structs.replace(engine_settings, slots=cap.slots)
        # Watched: a decode that stops making progress counts as a dead engine.
        engine = WatchedEngine(
            await anyio.to_thread.run_sync(load_engine, engine_settings),
            worker_settings.worker_engine_stall_seconds,
        )
        embedder = Embedder(embedding_settings)
        metrics.capacity.set(cap.slots)
        metrics.watch_engine(engine.inner)
        consumer = JobConsumer(
            redis,
            Scripts(redis),
            queue_settings,
            model=engine_settings.model_name,
            name=lease.name,
        )
        # Every worker process on this GPU (or CPU host) shares one semaphore.
        semaphore = GpuSemaphore(
            redis,
            worker_settings.worker_semaphore_key or cap.gpu,
            cap.slots,
            owner=lease.name,
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
            # Jobs of kind `embedding`; the model loads on the first one.
            embedder=embedder,
        )
        if redis_settings is not None and redis_settings.redis_wait_replicas > 0:
            worker.confirm_finished = replicated(redis, consumer.model, redis_settings)
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
            metrics_port=metrics_port,
        )

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for signum in received:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    stop.set()
                    return

        async def watchdog() -> None:
            # An engine that dies under a live process: drain (hand jobs
            # back) and exit non-zero so the supervisor restarts us.
            while True:  # polled: engines have no death callback
                await anyio.sleep(1)
                if not engine_alive(engine):
                    break
            log.error("engine stopped: draining and exiting")
            fail()

        notifications = WorkerNotifications(notifier, worker)

        async def systemd() -> None:
            # Ready once the model is loaded (above) and the group is joined.
            await with_backoff(consumer.ensure_group)
            notifications.ready()
            tg.start_soon(notifications.run)
            await stop.wait()  # SIGTERM, a dead engine or a lost name
            notifications.stopping()

        tg.start_soon(signals)
        tg.start_soon(watchdog)
        tg.start_soon(heartbeat.run)
        # From the event loop: a hung loop, or a dead or stuck engine, stops
        # the pings, and systemd restarts the worker after WatchdogSec.
        tg.start_soon(notifier.keep_alive, lambda: engine_alive(engine))
        tg.start_soon(systemd)
        log.info(
            "worker %s serving %s with engine %s, metrics %s",
            worker.name,
            worker.model,
            engine_settings.engine,
            f"on {worker_settings.worker_metrics_host}:{metrics_port}" if metrics_port else "off",
        )
        await worker.run(stop=stop)
        tg.cancel_scope.cancel()
    await heartbeat.withdraw()
    engine.close()
    embedder.close()
    log.info("worker %s stopped after %d job(s)", worker.name, worker.jobs_done)
    notifier.close()
    return 1 if failed else 0


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
    ingest = sub.add_parser("ingest", help="send .txt, .md and .pdf files to a collection")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    ingest.add_argument("--collection", required=True, help="made if missing")
    ingest.add_argument(
        "--url",
        default=os.environ.get("GATEWAY_URL") or "http://127.0.0.1:8080",
        help="the gateway (GATEWAY_URL)",
    )
    ingest.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="a gateway key")
    ingest.add_argument("--api-prefix", default=os.environ.get("API_PREFIX") or "/api/v1")
    dead = sub.add_parser("dead", help="dead-lettered jobs")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list")
    dead_list.add_argument("--model")
    replay = dead_sub.add_parser("replay")
    replay.add_argument("entry_ids", nargs="+", help="dead-letter entry ids (or 'all')")
    replay.add_argument("--model")
    args = parser.parse_args(argv)
    command = args.command or "run"
    if command == "ingest":
        # Talks to the gateway only: no Redis, no store, no model here.
        from streamworker import cli

        return cli.ingest(args)
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
            embedding_settings = from_env(EmbeddingSettings)
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
        try:
            return anyio.run(
                run_worker,
                redis_settings,
                queue_settings,
                engine_settings,
                worker_settings,
                embedding_settings,
                backend_options={"use_uvloop": True},
            )
        except SettingsError as exc:
            # A valid setting this host cannot honour now: the name is in use
            # by a live worker, or the port by another process.
            print(f"streamworker: cannot start: {exc}", file=sys.stderr)
            return 2
    from streamworker import cli

    return anyio.run(cli.dispatch, args, redis_settings, queue_settings)


if __name__ == "__main__":
    sys.exit(main())
