"""python -m gateway: settings -> create_app -> run.

python -m gateway hash-key [--generate] [--name NAME]: a line for API_KEYS_FILE.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop
from aiohttp import web

from gateway.app import create_app
from gateway.auth import KeyringError, hash_key_main
from gateway.settings import GatewaySettings
from streamworker.protocol.logs import setup_logging
from streamworker.protocol.settings import QueueSettings, RedisSettings, SettingsError, from_env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-key"]:
        return hash_key_main(argv[1:])
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
    if settings.environment == "production" and logging.root.level < logging.INFO:
        # Production logs at INFO: DEBUG could carry prompts (LOG_PROMPTS).
        logging.root.setLevel(logging.INFO)
        logging.getLogger("gateway").warning("ENVIRONMENT=production: LOG_LEVEL raised to INFO")
    try:
        app = create_app(settings, redis_settings, queue_settings)
    except KeyringError as exc:
        print(f"gateway: refusing to start: {exc}", file=sys.stderr)
        return 2
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
        # Compressed request bodies are refused (415, gateway/security.py):
        # no decompression bombs, and no parser-level errors outside our
        # OpenAI-shaped error bodies.
        auto_decompress=False,
        print=None,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
