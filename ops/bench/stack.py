"""The processes a benchmark runs against: the project's own redis-server,
gateway and workers (the test harness's process wrappers), and the peer,
llama_cpp.server. Each on a free loopback port, stopped when the block ends."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.harness import Gateway, RedisServer, Worker, free_port, wait_for


@contextlib.contextmanager
def redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def gateway(server: RedisServer, workdir: Path, **env: str) -> Iterator[Gateway]:
    gw = Gateway(server.url, workdir / f"gateway-{time.monotonic_ns()}.log", **env)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@contextlib.contextmanager
def worker(server: RedisServer, workdir: Path, name: str, **env: str) -> Iterator[Worker]:
    w = Worker(
        server.url, workdir / f"worker-{name}.log", name, WORKER_HEARTBEAT_SECONDS="1", **env
    )
    w.start(wait_registered=True, redis=server)
    try:
        yield w
    finally:
        w.stop()
        server.cli("FLUSHALL")  # the next worker starts on an empty queue


@contextlib.contextmanager
def peer_server(model_path: str, threads: int, n_ctx: int, workdir: Path) -> Iterator[str]:
    """llama_cpp.server on the same model, threads and context."""
    port = free_port()
    log = open(workdir / "llama_cpp_server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            str(n_ctx),
            "--chat_format",
            "gemma",
            "--model_alias",
            "peer",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(url + "/v1/models", timeout=1).status_code == 200,
            timeout=120,
            what="llama_cpp.server",
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def peer_available() -> str | None:
    """None if llama_cpp.server can run here, else why not."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        return f"not installed ({exc.name}); pip install -e '.[bench]'"
    return None
