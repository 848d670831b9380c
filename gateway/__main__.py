"""python -m gateway: settings -> create_app -> run (gateway/server.py), or
with GATEWAY_WORKERS > 1 that many processes under a supervisor
(gateway/supervisor.py).

python -m gateway hash-key [--generate] [--name NAME]: a line for API_KEYS_FILE.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from gateway import server, supervisor
from gateway.app import create_app
from gateway.auth import KeyringError, hash_key_main
from gateway.settings import GatewaySettings
from streamworker.protocol.logs import setup_logging
from streamworker.protocol.settings import QueueSettings, RedisSettings, SettingsError, from_env
from streamworker.qdrant import QdrantSettings, single_process_problem


def why_not_processes(settings: GatewaySettings, processes: int) -> str | None:
    """Why this gateway cannot run as `processes` processes, or None."""
    if processes <= 1:
        return None
    if settings.gateway_port == 0:
        return "GATEWAY_PORT: 0 would give every process its own port; name one"
    # Every gateway process opens the retrieval store (gateway/retrieval/):
    # an embedded one is locked to the process that opened its path, or is
    # each process's own memory, so several processes need a Qdrant server.
    problem = single_process_problem(from_env(QdrantSettings), processes)
    if problem:
        return problem
    try:  # the supervisor's processes bind with SO_REUSEPORT: is anyone else there?
        with socket.create_server((settings.gateway_host, settings.gateway_port)):
            pass
    except OSError as exc:
        return (
            f"GATEWAY_HOST/GATEWAY_PORT: cannot listen on {settings.gateway_host}:"
            f"{settings.gateway_port} ({exc.strerror})"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-key"]:
        return hash_key_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", help="GATEWAY_HOST")
    parser.add_argument("--port", type=int, help="GATEWAY_PORT")
    parser.add_argument("--redis-url", help="REDIS_URL")
    # One process of a supervised group: it serves, the supervisor supervises.
    parser.add_argument("--one-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = from_env(GatewaySettings, gateway_host=args.host, gateway_port=args.port)
        redis_settings = from_env(RedisSettings, redis_url=args.redis_url)
        queue_settings = from_env(QueueSettings)
        processes = 1 if args.one_process else settings.processes()
        problem = why_not_processes(settings, processes)
    except SettingsError as exc:
        print(f"gateway: bad setting: {exc}", file=sys.stderr)
        return 2
    if problem:
        print(f"gateway: cannot start: {problem}", file=sys.stderr)
        return 2
    setup_logging("gateway")
    if settings.environment == "production" and logging.root.level < logging.INFO:
        # Production logs at INFO: DEBUG could carry prompts (LOG_PROMPTS).
        logging.root.setLevel(logging.INFO)
        logging.getLogger("gateway").warning("ENVIRONMENT=production: LOG_LEVEL raised to INFO")
    try:
        # Built here even for a supervisor: a missing key stops it at once,
        # with one line, rather than each of its processes in turn.
        app = create_app(settings, redis_settings, queue_settings)
    except KeyringError as exc:
        print(f"gateway: refusing to start: {exc}", file=sys.stderr)
        return 2
    if processes > 1:
        logging.getLogger("gateway").info(
            "gateway: %d processes on %s:%d",
            processes,
            settings.gateway_host,
            settings.gateway_port,
        )
        return supervisor.run(
            processes,
            [a for a in argv if a != "--one-process"],
            settings.gateway_shutdown_grace_seconds,
        )
    return server.run(app, settings, reuse_port=args.one_process)


if __name__ == "__main__":
    sys.exit(main())
