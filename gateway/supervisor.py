"""GATEWAY_WORKERS > 1: that many gateway processes on one port, under this
supervisor.

One aiohttp process uses one core. Each process here is a plain
`python -m gateway` (gateway/server.py) that binds the port with SO_REUSEPORT;
the kernel spreads new connections evenly across their listening sockets.
Chosen over gunicorn's aiohttp worker because it needs no new dependency, a
process that stops closes only its own socket (a rolling restart refuses
nobody), and the supervisor can watch its processes the way systemd watches
it: each process sends READY=1 and WATCHDOG=1 (streamworker/sdnotify.py) to a
socket of the supervisor's, which relays one READY=1 and one watchdog to
systemd.

- start: every process ready (Redis answered) -> READY=1;
- a process that exits is started again; one that misses its watchdog
  (a hung event loop) is killed and started again; one that refuses to start
  (status 2: a setting, the port) stops the whole gateway with status 2;
- SIGHUP: rolling restart, one process at a time: the new one must be ready
  before the old one gets SIGTERM and finishes its requests in flight;
- SIGTERM: every process stops gracefully (gateway/server.py), then we exit.

Counters and histograms add up across processes through prometheus-client's
multiprocess mode: the supervisor gives every process PROMETHEUS_MULTIPROC_DIR,
emptied when it starts (gateway/metrics.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from gateway.metrics import MULTIPROC_DIR_ENV
from streamworker.sdnotify import Notifier, parse, socket_address

log = logging.getLogger("gateway.supervisor")

# A process's own watchdog: it pings every half of this from its event loop.
PROCESS_WATCHDOG_SECONDS = 10.0
# How long a new process may take to be ready during a rolling restart.
READY_TIMEOUT_SECONDS = 60.0
# More restarts than this within the window: something is wrong with every
# process, not one (Redis URL aside: a process without Redis still starts).
CRASH_LOOP = (5, 30.0)
TICK_SECONDS = 0.2


@dataclass(eq=False)
class Process:
    slot: int
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    last_ping: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid


def metrics_dir() -> tuple[Path, bool]:
    """PROMETHEUS_MULTIPROC_DIR emptied (the files of processes gone would
    otherwise be added in), or a fresh one; and whether it is ours to remove."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        return path, False
    # systemd's RuntimeDirectory= when set, else the temp dir.
    base = os.environ.get("RUNTIME_DIRECTORY") or None
    return Path(tempfile.mkdtemp(prefix="gateway-metrics-", dir=base)), True


class Supervisor:
    def __init__(self, processes: int, argv: list[str], stop_grace: float) -> None:
        self.n = processes
        self.argv = argv
        self.stop_grace = stop_grace
        self.notifier = Notifier.from_env()
        self.serving: dict[int, Process] = {}
        self.retiring: list[Process] = []
        self.restarts: deque[float] = deque()
        self._names = itertools.count()
        self._wake = asyncio.Event()
        self._stop = False
        self._reload = False
        self._status = ""

    # -- processes -------------------------------------------------------------

    def _spawn(self, slot: int, metrics: Path) -> Process:
        address = f"@streamworker-gateway/{os.getpid()}/{slot}/{next(self._names)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(socket_address(address))
        sock.setblocking(False)
        env = {
            **os.environ,
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": str(int(PROCESS_WATCHDOG_SECONDS * 1e6)),
            MULTIPROC_DIR_ENV: str(metrics),
        }
        env.pop("WATCHDOG_PID", None)  # systemd's, naming us
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--one-process", *self.argv], env=env
        )
        p = Process(slot, proc, sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notify, p)
        log.info("gateway process %d started (pid %d)", slot, proc.pid)
        return p

    def _on_notify(self, p: Process) -> None:
        while True:
            try:
                data = p.sock.recv(4096)
            except (BlockingIOError, OSError):
                return
            fields = parse(data)
            if fields.get("READY") == "1":
                p.ready = True
            if "READY" in fields or "WATCHDOG" in fields:
                p.last_ping = time.monotonic()
            self._wake.set()

    def _forget(self, p: Process) -> None:
        asyncio.get_running_loop().remove_reader(p.sock.fileno())
        p.sock.close()

    def _reap(self, metrics: Path) -> int | None:
        """Restart processes that died; a status to exit with when the
        gateway cannot run at all."""
        for p in list(self.retiring):
            if p.proc.poll() is not None:
                self._forget(p)
                self.retiring.remove(p)
        for slot, p in list(self.serving.items()):
            code = p.proc.poll()
            if code is None:
                continue
            self._forget(p)
            if code == 2 and not p.ready:
                return 2  # it said why on stderr: a setting or the port
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and now - self.restarts[0] > CRASH_LOOP[1]:
                self.restarts.popleft()
            if len(self.restarts) > CRASH_LOOP[0]:
                log.error("gateway processes keep exiting; giving up")
                return 1
            log.error("gateway process %d (pid %d) exited with %s; restarting", slot, p.pid, code)
            self.serving[slot] = self._spawn(slot, metrics)
        return None

    def _check_watchdogs(self) -> None:
        now = time.monotonic()
        for slot, p in self.serving.items():
            if p.ready and now - p.last_ping > PROCESS_WATCHDOG_SECONDS:
                log.error("gateway process %d (pid %d) stopped answering: killed", slot, p.pid)
                p.proc.kill()  # reaped and started again on the next tick

    def _report(self) -> None:
        ready = sum(p.ready for p in self.serving.values())
        status = f"{ready}/{self.n} gateway processes ready"
        if self.retiring:
            status += f", {len(self.retiring)} finishing requests after a restart"
        if status != self._status:
            self._status = status
            self.notifier.status(status)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    # -- the life of the supervisor ---------------------------------------------

    async def _rolling_restart(self, metrics: Path) -> None:
        """One slot at a time, so the port never has fewer ready processes."""
        self.notifier.reloading()
        log.info("SIGHUP: restarting %d gateway processes one at a time", self.n)
        for slot in sorted(self.serving):
            new = self._spawn(slot, metrics)
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not new.ready and new.proc.poll() is None and not self._stop:
                if time.monotonic() > deadline:
                    break
                await self._sleep(TICK_SECONDS)
            if not new.ready:
                log.error("restart stopped: the new process %d did not become ready", slot)
                new.proc.kill()
                new.proc.wait()
                self._forget(new)
                break
            old, self.serving[slot] = self.serving[slot], new
            old.proc.send_signal(signal.SIGTERM)  # finishes its requests in flight
            self.retiring.append(old)
        if not self._stop:
            self.notifier.ready()
            self._report()

    async def _stop_all(self) -> None:
        everyone = [*self.serving.values(), *self.retiring]
        for p in everyone:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace + 10
        while any(p.proc.poll() is None for p in everyone) and time.monotonic() < deadline:
            await self._sleep(TICK_SECONDS)
        for p in everyone:
            if p.proc.poll() is None:
                log.error("gateway process %d (pid %d) did not stop: killed", p.slot, p.pid)
                p.proc.kill()
            p.proc.wait()
            self._forget(p)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            self._stop = True
            self._wake.set()

        def reload() -> None:
            self._reload = True
            self._wake.set()

        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_signal_handler(signal.SIGINT, stop)
        loop.add_signal_handler(signal.SIGHUP, reload)
        metrics, remove_metrics = metrics_dir()
        keep_alive = asyncio.create_task(
            self.notifier.keep_alive(lambda: any(p.ready for p in self.serving.values()))
        )
        code = 0
        try:
            for slot in range(self.n):
                self.serving[slot] = self._spawn(slot, metrics)
            announced = False
            while not self._stop:
                await self._sleep(TICK_SECONDS)
                if self._stop:  # a Ctrl-C reaches the processes too: no restarts
                    break
                failed = self._reap(metrics)
                if failed is not None:
                    code = failed
                    break
                self._check_watchdogs()
                if not announced and all(p.ready for p in self.serving.values()):
                    announced = True
                    log.info("%d gateway processes ready", self.n)
                    self.notifier.ready()
                self._report()
                if self._reload and not self._stop:
                    self._reload = False
                    await self._rolling_restart(metrics)
            self.notifier.stopping("stopping gateway processes")
            await self._stop_all()
        finally:
            keep_alive.cancel()
            if remove_metrics:
                shutil.rmtree(metrics, ignore_errors=True)
            self.notifier.close()
        return code


def run(processes: int, argv: list[str], stop_grace: float) -> int:
    return uvloop.run(Supervisor(processes, argv, stop_grace).run())
