"""python -m gateway: settings -> create_app -> run."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop
from aiohttp import web

from gateway.app import create_app
from gateway.settings import GatewaySettings
from streamworker.logs import setup_logging
from streamworker.settings import QueueSettings, RedisSettings, SettingsError, from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", help="GATEWAY_HOST")
    parser.add_argument("--port", type=int, help="GATEWAY_PORT")
    parser.add_argument("--redis-url", help="REDIS_URL")
    args = parser.parse_args(argv)
    try:
        settings = from_env(GatewaySettings, gateway_host=args.host, gateway_port=args.port)
        redis_settings = from_env(RedisSettings, redis_url=args.redis_url)
        queue_settings = from_env(QueueSettings)
    except SettingsError as exc:
        print(f"gateway: bad setting: {exc}", file=sys.stderr)
        return 2
    setup_logging("gateway")
    app = create_app(settings, redis_settings, queue_settings)
    logging.getLogger("gateway").info(
        "gateway listening on http://%s:%d", settings.gateway_host, settings.gateway_port
    )
    web.run_app(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        # Cancel a handler when its client disconnects: that is how a closed
        # stream cancels its job at once, not at the next write.
        handler_cancellation=True,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
