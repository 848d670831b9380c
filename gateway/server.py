"""One gateway process serving the app: listen, tell systemd (or the
supervisor, gateway/supervisor.py) when it is ready, keep its watchdog fed
from the event loop, and stop gracefully on SIGTERM.

Graceful stop: the listening socket closes first (new connections go to the
other processes, or wait for the restarted one), then requests in flight,
streams included, get GATEWAY_SHUTDOWN_GRACE_SECONDS to finish. A stream
still running after that is cut; its client finds the job by the `X-Job-Id`
header and reads the rest from `GET /v1/jobs/{id}/events` with
`Last-Event-ID` (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

import uvloop
from aiohttp import web
from redis.exceptions import RedisError

from gateway import state
from streamworker.sdnotify import Notifier

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


class CannotListen(Exception):
    """The address is in use, or not ours to bind: a restart would not help."""


# How often a process that is not ready yet asks Redis again.
READY_POLL_SECONDS = 0.5


async def _announce_ready(app: web.Application, notifier: Notifier, listening: str) -> None:
    """READY=1 once Redis answers: before that the process serves /health
    and answers 503 on /ready, but it is no replacement for a ready one."""
    redis = state.of(app).redis
    while True:
        try:
            async with asyncio.timeout(2):
                await redis.ping()
            break
        except (RedisError, OSError, TimeoutError):
            await asyncio.sleep(READY_POLL_SECONDS)
    notifier.ready(f"serving on {listening}")


async def serve(
    app: web.Application, settings: GatewaySettings, *, reuse_port: bool = False
) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    notifier = Notifier.from_env()
    runner = web.AppRunner(
        app,
        # Cancel a handler when its client disconnects: that is how a closed
        # stream cancels its job at once, not at the next write.
        handler_cancellation=True,
        access_log=None,
        # Compressed request bodies are refused (415, gateway/security.py):
        # no decompression bombs, and no parser-level errors outside our
        # OpenAI-shaped error bodies.
        auto_decompress=False,
        shutdown_timeout=settings.gateway_shutdown_grace_seconds,
    )
    await runner.setup()
    # reuse_port: every process of a multi-process gateway binds the same
    # port and the kernel spreads new connections across them.
    site = web.TCPSite(
        runner, settings.gateway_host, settings.gateway_port, reuse_port=reuse_port or None
    )
    try:
        await site.start()
    except OSError as exc:  # the address: in use, or not ours to bind
        await runner.cleanup()
        raise CannotListen(
            f"GATEWAY_HOST/GATEWAY_PORT: cannot listen on {settings.gateway_host}:"
            f"{settings.gateway_port} ({exc.strerror})"
        ) from None
    listening = f"http://{settings.gateway_host}:{settings.gateway_port}"
    log.info("gateway listening on %s", listening)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background = [
        asyncio.create_task(_announce_ready(app, notifier, listening), name="sd-ready"),
        asyncio.create_task(notifier.keep_alive(), name="sd-watchdog"),
    ]
    try:
        await stop.wait()
        log.info(
            "stopping: no new connections; requests in flight get %.0fs",
            settings.gateway_shutdown_grace_seconds,
        )
        notifier.stopping("finishing requests in flight")
        await runner.cleanup()
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        notifier.close()


def run(app: web.Application, settings: GatewaySettings, *, reuse_port: bool = False) -> int:
    try:
        uvloop.run(serve(app, settings, reuse_port=reuse_port))
    except CannotListen as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
