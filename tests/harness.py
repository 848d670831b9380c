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

    def flush(self) -> None:
        self.cli("FLUSHALL")

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

    def start(
        self, wait_registered: bool = True, redis: RedisServer | RedisClusterServer | None = None
    ) -> Worker:
        super().start()
        if wait_registered and redis is not None:
            self.wait_registered(redis)
        return self

    def wait_registered(self, redis: RedisServer | RedisClusterServer) -> None:
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

    def _registered_as(self, redis: RedisServer | RedisClusterServer) -> str | None:
        """The registry id whose heartbeat carries this process's pid."""
        for wid in redis.cli("ZRANGE", "sw:workers", "0", "-1").split():
            if redis.cli("HGET", f"sw:worker:{wid}", "pid").strip() == str(self.pid):
                return wid
        return None


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port > 55000:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServer:
    """Three masters and three replicas of redis-server on loopback ports, made
    a cluster by `redis-cli --cluster create`, with a short node timeout so a
    killed master's replica takes over in a couple of seconds. It answers the
    same calls as RedisServer (url, ping, cli, start, stop, flush), so the
    process tests run on it unchanged."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.nodes = [RedisServer(workdir / f"node{i}", cluster_port()) for i in range(masters * 2)]
        self.masters = masters

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def url(self) -> str:
        """Any live node seeds the client, which learns the rest."""
        node = next((n for n in self.nodes if n.proc is not None), self.nodes[0])
        return f"redis://127.0.0.1:{node.port}/0"

    def _conf(self, node: RedisServer) -> str:
        return (
            f"include {ROOT / 'redis.conf'}\n"
            f"port {node.port}\nbind 127.0.0.1\ndir {node.workdir}\n"
            'daemonize no\nmaxmemory 256mb\nsave ""\nappendonly no\n'
            "cluster-enabled yes\ncluster-config-file nodes.conf\n"
            f"cluster-node-timeout {self.NODE_TIMEOUT_MS}\n"
            # A replica may take over however long its link was down.
            "cluster-replica-validity-factor 0\n"
        )

    def start_node(self, node: RedisServer) -> None:
        conf = node.workdir / "test.conf"
        conf.write_text(self._conf(node))
        node.proc = subprocess.Popen(
            ["redis-server", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=node.workdir,
        )
        wait_for(node.ping, timeout=20, what=f"redis-server :{node.port}")

    def start(self) -> None:
        if self.nodes[0].proc is not None and self.ping():
            return
        for node in self.nodes:
            if node.proc is None:
                self.start_node(node)
        if "cluster_state:ok" in self.nodes[0].cli("CLUSTER", "INFO"):
            return  # restarted nodes rejoin from nodes.conf
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        try:
            wait_for(self.healthy, timeout=60, what="cluster_state:ok on every node")
        except TimeoutError as exc:
            message = f"{exc}\n{self.describe()}"
            self.stop()  # no node outlives a failed start
            raise TimeoutError(message) from None

    def describe(self) -> str:
        """Each node's view, for a failure message."""
        out = []
        for node in self.nodes:
            if node.proc is None or not node.ping():
                out.append(f":{node.port} down")
                continue
            state = node.cli("CLUSTER", "INFO").splitlines()[0]
            repl = [
                line
                for line in node.cli("INFO", "replication").splitlines()
                if line.startswith(("role", "connected_slaves", "slave0", "master_link"))
            ]
            out.append(f":{node.port} {state} {' '.join(repl)}")
        return "\n".join(out)

    def healthy(self) -> bool:
        """Every node up, agrees the cluster is ok, and every master has its
        replica in sync."""
        if not all(n.proc is not None and n.ping() for n in self.nodes):
            return False
        if not all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes):
            return False
        masters = self.master_ports()
        if len(masters) != self.masters:
            return False
        for port in masters:
            info = self.node(port).cli("INFO", "replication")
            if "connected_slaves:1" not in info or "state=online" not in info:
                return False
        return True

    def ping(self) -> bool:
        return all(n.proc is not None and n.ping() for n in self.nodes)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def cli(self, *args: str) -> str:
        """redis-cli -c: follows -MOVED to the node owning the key."""
        node = next(n for n in self.nodes if n.proc is not None)
        out = subprocess.run(
            ["redis-cli", "-c", "-p", str(node.port), *args],
            capture_output=True,
            timeout=10,
            check=True,
        )
        return out.stdout.decode()

    def master_ports(self) -> list[int]:
        """Ports of the live masters, from a live node's view."""
        node = next(n for n in self.nodes if n.proc is not None)
        ports = []
        for line in node.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and fields[7] == "connected":
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(ports)

    def owner(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now."""
        slot = int(self.cli("CLUSTER", "KEYSLOT", key).strip())
        node = next(n for n in self.nodes if n.proc is not None)
        for line in node.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                first, _, last = span.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no live master owns slot {slot}")

    def flush(self) -> None:
        for port in self.master_ports():
            self.node(port).cli("FLUSHALL")

    def kill(self, port: int) -> None:
        self.node(port).kill()

    def revive(self, port: int) -> None:
        """Start a killed node again: it rejoins (as a replica, if its
        replica took over) and the cluster heals."""
        self.start_node(self.node(port))
        wait_for(self.healthy, timeout=60, what="cluster healed")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
