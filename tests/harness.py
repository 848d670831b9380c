"""Real processes for the tests: a private redis-server, gateways, workers.

Each runs as a child process on a free loopback port, in a temp dir, so a test
can SIGKILL and restart it like an operator's worst day.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # keep polling; report the last error
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


class RedisServer:
    """redis-server with the project's redis.conf, on a free port, in `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        conf = self.workdir / "test.conf"
        conf.write_text(
            f"include {ROOT / 'redis.conf'}\n"
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            'daemonize no\nmaxmemory 512mb\nsave ""\n'
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_for(self.ping, timeout=20, what="redis-server")

    def ping(self) -> bool:
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "PING"], capture_output=True, timeout=2
            )
        except subprocess.TimeoutExpired:
            return False
        return out.stdout.strip() == b"PONG"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, timeout=10, check=True
        )
        return out.stdout.decode()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None


class Service:
    """A `python -m ...` child process with its env and a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", *self.args], env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._fh.close()
        return code

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
        elif self.proc is not None:
            self.wait(1)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Gateway(Service):
    def __init__(self, redis_url: str, log: Path, **env: str) -> None:
        self.port = free_port()
        super().__init__(
            ["gateway"],
            {
                "REDIS_URL": redis_url,
                "GATEWAY_PORT": str(self.port),
                "GATEWAY_HOST": "127.0.0.1",
                **env,
            },
            log,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        super().start()
        wait_for(
            lambda: httpx.get(self.url + "/health", timeout=1).status_code == 200,
            timeout=30,
            what="gateway /health",
        )
        return self


class Worker(Service):
    """A worker process. By default it is pinned: `name` is its WORKER_NAME and
    its metrics server is off. `pinned=False` leaves WORKER_NAME and
    WORKER_METRICS_PORT unset, as a plain `python -m streamworker run` has
    them: the worker picks its own instance number and port, `name` only
    labels it until `wait_registered` learns the name it took."""

    def __init__(
        self, redis_url: str, log: Path, name: str, *, pinned: bool = True, **env: str
    ) -> None:
        self.name = name
        self.pinned = pinned
        # Empty counts as unset, whatever the test runner's environment holds.
        unset = {"WORKER_NAME": "", "WORKER_INSTANCE": "", "WORKER_METRICS_PORT": ""}
        identity = {"WORKER_NAME": name, "WORKER_METRICS_PORT": "0"} if pinned else unset
        super().__init__(
            ["streamworker", "run"],
            # Each test worker gets its own GPU semaphore (as if on its own
            # card) unless a test shares one on purpose.
            {
                "REDIS_URL": redis_url,
                **identity,
                "WORKER_SEMAPHORE_KEY": f"test-{name}",
                "WORKER_HEARTBEAT_SECONDS": "0.5",
                "WORKER_BLOCK_MS": "200",
                **env,
            },
            log,
        )

    def start(self, wait_registered: bool = True, redis: RedisServer | None = None) -> Worker:
        super().start()
        if wait_registered and redis is not None:
            self.wait_registered(redis)
        return self

    def wait_registered(self, redis: RedisServer) -> None:
        if self.pinned:
            wait_for(
                lambda: self.name in redis.cli("ZRANGE", "sw:workers", "0", "-1"),
                timeout=60,
                what=f"worker {self.name} heartbeat",
            )
            return
        self.name = wait_for(
            lambda: self._registered_as(redis),
            timeout=60,
            interval=0.2,
            what=f"worker {self.name} (pid {self.pid}) heartbeat",
        )

    def _registered_as(self, redis: RedisServer) -> str | None:
        """The registry id whose heartbeat carries this process's pid."""
        for wid in redis.cli("ZRANGE", "sw:workers", "0", "-1").split():
            if redis.cli("HGET", f"sw:worker:{wid}", "pid").strip() == str(self.pid):
                return wid
        return None
