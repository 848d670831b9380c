"""systemd's notifications, as real processes send them: the test binds the
datagram socket systemd would (NOTIFY_SOCKET) and reads what arrives. A
worker: READY=1 after the model is loaded and the group joined, WATCHDOG=1
at half of WATCHDOG_USEC, STATUS= lines, STOPPING=1 and EXTEND_TIMEOUT_USEC
on SIGTERM; and no more WATCHDOG=1 once the engine hangs (the echo test
double's ECHO_HANG_MARKER), in its thread or on the event loop. A gateway:
READY=1 only once Redis answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamworker.sdnotify import Notifier, parse, socket_address
from tests.harness import PYTHON, ROOT, Gateway, RedisServer, wait_for

ECHO = {"ENGINE": "echo", "MODEL_NAME": "echo-test"}


# -- the protocol, against a real socket ---------------------------------------


@pytest.mark.unit
def test_abstract_names_and_parsing() -> None:
    assert socket_address("@sw/notify") == b"\0sw/notify"
    assert socket_address("/run/notify") == "/run/notify"
    assert parse(b"READY=1\nSTATUS=serving 1/2 slots\n") == {
        "READY": "1",
        "STATUS": "serving 1/2 slots",
    }


@pytest.mark.unit
def test_watchdog_belongs_to_the_pid_it_names() -> None:
    mine = Notifier.from_env(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval == 2.0  # half of the deadline
    inherited = Notifier.from_env(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    )
    assert inherited.watchdog_interval == 0.0
    assert not Notifier.from_env({}).enabled
    assert Notifier.from_env({}).ready() is False  # outside systemd: a no-op


@pytest.mark.unit
def test_sends_to_an_abstract_socket() -> None:
    name = f"@streamworker-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(socket_address(name))
        sock.settimeout(2)
        notifier = Notifier(name)
        assert notifier.ready("serving 0/1 slots")
        assert parse(sock.recv(4096)) == {"READY": "1", "STATUS": "serving 0/1 slots"}
        notifier.extend_timeout(1.5)
        assert parse(sock.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "1500000"}
        notifier.close()
    # Nobody listening any more: dropped, never raised.
    assert Notifier(name).watchdog() is False


# -- a real worker ------------------------------------------------------------


class Listener:
    """The socket systemd would bind, read as systemd does (at once, by a
    thread of its own: a datagram socket's queue is short), with every
    notification kept and the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, dict[str, str]]] = []
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), parse(data)))

    def close(self) -> None:
        self._done.set()
        self._reader.join(5)
        self.sock.close()

    @staticmethod
    def pump(seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, key: str, value: str | None = None, timeout: float = 60) -> float:
        """Until a notification with `key` (=`value`) arrives; its time."""
        end = time.monotonic() + timeout
        while True:
            for t, fields in list(self.got):
                if key in fields and (value is None or fields[key] == value):
                    return t
            if time.monotonic() > end:
                raise TimeoutError(f"no {key}={value} in {[f for _, f in self.got]}")
            time.sleep(0.05)

    def times(self, key: str, after: float = 0.0) -> list[float]:
        return [t for t, f in list(self.got) if key in f and t > after]

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, f in list(self.got) if "STATUS" in f]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    # Short path: AF_UNIX names are limited to 108 bytes.
    path = Path(f"/tmp/sw-notify-{os.getpid()}-{time.monotonic_ns()}.sock")
    lst = Listener(path)
    yield lst
    lst.close()
    path.unlink(missing_ok=True)


def start_worker(
    redis_url: str, tmp_path: Path, notify: str, name: str, **env: str
) -> subprocess.Popen[bytes]:
    """A worker as systemd starts one: NOTIFY_SOCKET, WATCHDOG_USEC, and
    WATCHDOG_PID naming the worker's own pid (the shell execs into Python,
    keeping its pid)."""
    full = {
        **os.environ,
        "REDIS_URL": redis_url,
        "WORKER_NAME": name,
        "WORKER_METRICS_PORT": "0",
        "WORKER_SEMAPHORE_KEY": f"test-{name}",
        "WORKER_HEARTBEAT_SECONDS": "0.5",
        "WORKER_BLOCK_MS": "200",
        "NOTIFY_SOCKET": notify,
        "WATCHDOG_USEC": "1000000",  # 1 s: a ping every 0.5 s
        "PYTHONUNBUFFERED": "1",
        **ECHO,
        **env,
    }
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen(
        ["sh", "-c", f'WATCHDOG_PID=$$ exec "{PYTHON}" -m streamworker run'],
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_ready_watchdog_status_and_stopping(
    redis_url: str,
    redis_server: RedisServer,
    start_gateway,
    listener: Listener,
    tmp_path: Path,
) -> None:
    proc = start_worker(redis_url, tmp_path, listener.address, "sd1", ECHO_TOKEN_INTERVAL_MS="100")
    try:
        ready = listener.wait("READY", "1")
        # The model was loading before: systemd showed it.
        assert listener.statuses()[0].startswith("loading echo-test")
        # READY means the consumer group exists (jobs can be read at once).
        assert "workers" in redis_server.cli("XINFO", "GROUPS", "sw:{echo-test}:jobs")
        ready_msg = next(f for t, f in listener.got if t == ready)
        assert ready_msg["STATUS"] == "serving 0/1 slots, 0 job(s) done"
        # WATCHDOG=1 every half of WATCHDOG_USEC.
        listener.pump(2.2)
        pings = listener.times("WATCHDOG", after=ready)
        assert len(pings) >= 3, listener.got
        assert max(b - a for a, b in zip([ready, *pings], pings, strict=False)) < 1.0
        # A job of about 3 s, then SIGTERM in the middle of it.
        gw = start_gateway()
        body = {
            "model": "echo-test",
            "max_tokens": 30,
            "messages": [{"role": "user", "content": "slow job"}],
        }
        job = httpx.post(gw.url + "/v1/jobs", json=body, timeout=10).json()
        wait_for(
            lambda: httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json()["status"] == "running",
            what="job running",
        )
        listener.wait("STATUS", "serving 1/1 slots, 0 job(s) done")
        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait("STOPPING", "1")
        stop_msg = next(f for t, f in listener.got if t == stopping)
        assert stop_msg["STATUS"].startswith("draining: 1 job(s) left")
        # The drain asks systemd for time while the job finishes.
        listener.wait("EXTEND_TIMEOUT_USEC")
        assert proc.wait(30) == 0
        assert httpx.get(f"{gw.url}/v1/jobs/{job['id']}").json()["status"] == "completed"
    finally:
        stop(proc)


@pytest.mark.parametrize("where", ["thread", "event loop"])
def test_a_hung_engine_stops_the_watchdog(
    redis_url: str, start_gateway, listener: Listener, tmp_path: Path, where: str
) -> None:
    env = {"ECHO_HANG_MARKER": "HANG_NOW", "WORKER_ENGINE_STALL_SECONDS": "1"}
    if where == "event loop":
        env["ECHO_CONCURRENT"] = "1"  # the echo double then generates on the loop
    proc = start_worker(redis_url, tmp_path, listener.address, "sd-hang", **env)
    try:
        listener.wait("READY", "1")
        listener.pump(1.2)
        assert listener.times("WATCHDOG"), "pings before the hang"
        gw = start_gateway()
        body = {
            "model": "echo-test",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "please HANG_NOW"}],
        }
        assert httpx.post(gw.url + "/v1/jobs", json=body, timeout=10).status_code == 202
        # Give the stall limit (1 s) and one ping interval to pass, then
        # watch: not a single WATCHDOG=1 for three watchdog deadlines.
        listener.pump(2.0)
        quiet_from = time.monotonic()
        listener.pump(3.0)
        assert proc.poll() is None, "the process lives on; only systemd restarts it"
        assert listener.times("WATCHDOG", after=quiet_from) == [], listener.got
        if where == "thread":
            # The loop runs, so the STATUS line says why it stopped pinging.
            assert any("engine stuck" in s for s in listener.statuses()), listener.statuses()
    finally:
        stop(proc)


def test_gateway_is_ready_once_redis_answers(listener: Listener, tmp_path: Path) -> None:
    """A gateway started before Redis serves /health at once but tells
    systemd READY=1 only when Redis answers."""
    redis = RedisServer(tmp_path / "late-redis")
    gw = Gateway(
        redis.url,
        tmp_path / "gateway.log",
        NOTIFY_SOCKET=listener.address,
        WATCHDOG_USEC="1000000",
    )
    try:
        gw.start()  # /health answers
        time.sleep(1.5)
        assert not listener.times("READY"), listener.got
        assert listener.times("WATCHDOG"), "the loop is fed while it waits"
        redis.start()
        listener.wait("READY", "1", timeout=30)
        gw.signal(signal.SIGTERM)
        listener.wait("STOPPING", "1")
        assert gw.wait(30) == 0
    finally:
        gw.stop()
        redis.stop()
