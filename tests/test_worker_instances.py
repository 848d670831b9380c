"""Many plain `python -m streamworker run` on one host: each takes its own
name (the lowest free instance number, kept across its own restarts) and its
own metrics port; a name or port that cannot be had stops the start with one
line naming the variable."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from streamworker import instance
from streamworker.instance import Holder, NameLease, NameTaken
from streamworker.protocol import keys
from streamworker.protocol.settings import from_env
from streamworker.settings import METRICS_PORT_BASE, WorkerSettings
from tests.conftest import ECHO, client_for
from tests.harness import RedisServer, Worker, wait_for
from tests.test_recovery import expected_echo, owner_of, stream_text

HOST = socket.gethostname()
LEASE = {"JOB_LEASE_SECONDS": "2"}  # a killed worker's jobs move on within seconds
ENV = {**ECHO, **LEASE, "ECHO_TOKEN_INTERVAL_MS": "20", "WORKER_CONCURRENCY": "2"}
JOBS = "sw:{echo-test}:job:*"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stream_all(client, prompts: list[str], max_tokens: int) -> list[str | None]:
    results: list[str | None] = [None] * len(prompts)

    def run(i: int) -> None:
        results[i] = stream_text(client, prompts[i], max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def one_line_error(output: str, variable: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if variable in line]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"streamworker: cannot start: {variable}"), lines[0]


@pytest.fixture
def plain_worker(redis_url: str, tmp_path: Path, services: list) -> Callable[..., Worker]:
    """Workers with the default name, instance and metrics port."""

    def make(label: str, **env: str) -> Worker:
        worker = Worker(
            redis_url, tmp_path / f"worker-{label}.log", label, pinned=False, **{**ENV, **env}
        )
        services.append(worker)
        return worker

    return make


def test_three_plain_workers_take_their_own_names_ports_and_jobs(
    plain_worker, start_gateway, redis_server: RedisServer, r
):
    preferred_free = all(port_free(METRICS_PORT_BASE + n) for n in range(3))
    workers = [plain_worker(f"p{i}").start(wait_registered=False) for i in range(3)]
    for worker in workers:  # started together: they race for the same numbers
        worker.wait_registered(redis_server)
    by_name = {w.name: w for w in workers}
    assert sorted(by_name) == [f"{HOST}-{n}" for n in range(3)]
    ports = {name: int(r.hget(keys.worker(name), "metrics_port")) for name in by_name}
    assert len(set(ports.values())) == 3 and 0 not in ports.values()
    if preferred_free:
        assert ports == {f"{HOST}-{n}": METRICS_PORT_BASE + n for n in range(3)}
    for port in ports.values():
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "proxy_capacity 2.0" in body

    # They share the load.
    client = client_for(start_gateway(**LEASE), timeout=60)
    prompts = [f"share{i} load{i}" for i in range(12)]
    assert stream_all(client, prompts, 30) == [expected_echo(p, 30) for p in prompts]
    first_round = set(r.keys(JOBS))
    assert {r.hget(k, "worker").decode() for k in first_round} == set(by_name)

    # kill -9 instance 1 while it runs jobs: they finish on the others, exactly.
    victim = by_name[f"{HOST}-1"]
    prompts = [f"kill{i} nine{i} resume{i}" for i in range(6)]
    results: list[list[str | None]] = []
    streams = threading.Thread(target=lambda: results.append(stream_all(client, prompts, 120)))
    streams.start()
    wait_for(lambda: victim.name in owner_of(r), timeout=20, what="instance 1 running a job")
    time.sleep(0.3)
    victim.kill()
    streams.join(60)
    assert results == [[expected_echo(p, 120) for p in prompts]]
    resumed = [k for k in set(r.keys(JOBS)) - first_round if int(r.hget(k, "attempt")) > 1]
    assert resumed, "the victim's jobs should have run again"
    assert all(r.hget(k, "worker").decode() != victim.name for k in resumed)

    # Its restart, with the same default settings, is instance 1 again; the
    # live workers keep their names.
    again = plain_worker("p1-again").start(redis=redis_server)
    assert again.name == victim.name
    assert all(w.alive() for w in workers if w is not victim)
    if preferred_free:
        assert int(r.hget(keys.worker(again.name), "metrics_port")) == ports[victim.name]
    assert "taken over from pid" in again.output()
    for worker in [*workers, again]:
        assert "Traceback" not in worker.output(), worker.output()


def test_a_taken_explicit_metrics_port_stops_the_start(redis_url, tmp_path, services, r):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        worker = Worker(
            redis_url, tmp_path / "w.log", "porty", WORKER_METRICS_PORT=str(port), **ECHO
        )
        services.append(worker)
        worker.start(wait_registered=False)
        assert worker.wait(60) == 2
    one_line_error(worker.output(), "WORKER_METRICS_PORT")
    assert not r.exists(keys.worker_name("porty")), "the name should be given back"


def test_a_taken_default_port_moves_to_the_next_free_one(
    redis_server, redis_url, tmp_path, services, r
):
    k = next(
        k
        for k in range(40, 200)
        if port_free(METRICS_PORT_BASE + k) and port_free(METRICS_PORT_BASE + k + 1)
    )
    with socket.socket() as held:
        held.bind(("127.0.0.1", METRICS_PORT_BASE + k))
        held.listen()
        worker = Worker(
            redis_url, tmp_path / "w.log", "movy", pinned=False, WORKER_INSTANCE=str(k), **ECHO
        )
        services.append(worker)
        worker.start(redis=redis_server)
    assert worker.name == f"{HOST}-{k}"
    port = int(r.hget(keys.worker(worker.name), "metrics_port"))
    assert port == METRICS_PORT_BASE + k + 1
    warnings = [line for line in worker.output().splitlines() if '"WARNING"' in line]
    assert len(warnings) == 1 and f"serving on {port} instead" in warnings[0]
    assert f"metrics on 127.0.0.1:{port}" in worker.output()
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


@pytest.mark.parametrize(("variable", "value"), [("WORKER_NAME", "twin"), ("WORKER_INSTANCE", "7")])
def test_a_pinned_name_runs_once(variable, value, redis_server, redis_url, tmp_path, services):
    env = {**ECHO, variable: value, "WORKER_METRICS_PORT": "0"}
    first = Worker(redis_url, tmp_path / "first.log", "first", pinned=False, **env)
    second = Worker(redis_url, tmp_path / "second.log", "second", pinned=False, **env)
    services.extend([first, second])
    first.start(redis=redis_server)
    second.start(wait_registered=False)
    assert second.wait(60) == 2
    one_line_error(second.output(), variable)
    assert first.alive()


def test_a_worker_whose_name_is_taken_from_it_stops(redis_server, redis_url, tmp_path, services, r):
    worker = Worker(redis_url, tmp_path / "w.log", "lossy", WORKER_NAME_LEASE_SECONDS="1.5", **ECHO)
    services.append(worker)
    worker.start(redis=redis_server)
    thief = Holder(host="elsewhere", boot="b", pidns="pid:[1]", pid=4321, start=1)
    r.set(keys.worker_name("lossy"), thief.encode())
    assert worker.wait(20) == 1
    assert "held by pid 4321 on elsewhere" in worker.output()
    assert r.get(keys.worker_name("lossy")) == thief.encode().encode()


# Pure logic and the lease against a real Redis, in this process.


@pytest.mark.unit
def test_settings_pin_names_and_ports():
    plain = from_env(WorkerSettings, {})
    assert plain.pinned_name() is None and plain.worker_metrics_port is None
    assert from_env(WorkerSettings, {"WORKER_INSTANCE": "3"}).pinned_name() == (
        f"{HOST}-3",
        "WORKER_INSTANCE",
    )
    assert from_env(WorkerSettings, {"WORKER_INSTANCE": "3"}).instance_number() == 3
    assert from_env(WorkerSettings, {"WORKER_INSTANCE": "GPU-5c1f"}).instance_number() is None
    named = from_env(WorkerSettings, {"WORKER_NAME": "a", "WORKER_INSTANCE": "1"})
    assert named.pinned_name() == ("a", "WORKER_NAME")
    assert from_env(WorkerSettings, {"WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0


@pytest.mark.unit
def test_holders_this_host_can_and_cannot_check():
    me = Holder.of_pid(os.getpid())
    assert me.gone(me) is False
    assert Holder.decode(me.encode()) == me
    # The same pid started at another time: a later process reusing the pid.
    assert dataclasses.replace(me, start=me.start + 1).gone(me) is True
    assert dataclasses.replace(me, host="elsewhere").gone(me) is None
    assert dataclasses.replace(me, pidns="pid:[1]").gone(me) is None  # another container
    assert Holder.decode(b"not json").gone(me) is None
    child = subprocess.Popen(["sleep", "0.2"])
    held = Holder.of_pid(child.pid)
    assert held.gone(me) is False
    # Exited but not reaped: a zombie holds nothing.
    wait_for(
        lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
        timeout=5,
        what="a zombie",
    )
    assert held.gone(me) is True
    child.wait()
    assert held.gone(me) is True


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aredis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.anyio
async def test_the_lowest_name_a_dead_process_left_is_taken(aredis, redis_server):
    alive = Holder.of_pid(redis_server.proc.pid)  # type: ignore[union-attr]
    dead = dataclasses.replace(alive, pid=alive.pid, start=alive.start + 1)
    await aredis.set(keys.worker_name(f"{HOST}-0"), alive.encode())
    await aredis.set(keys.worker_name(f"{HOST}-1"), dead.encode())
    lease = await instance.claim(aredis, pinned=None, ttl_seconds=5, instance=None)
    assert (lease.name, lease.instance, lease.previous) == (f"{HOST}-1", 1, dead)
    assert 0 < await aredis.pttl(lease.key) <= 5000
    # Renewal keeps it, takes it again if Redis lost it, and tells when
    # another process holds it.
    assert await lease.renew() is None
    await aredis.delete(lease.key)
    assert await lease.renew() is None and await aredis.exists(lease.key)
    await aredis.set(lease.key, alive.encode())
    assert await lease.renew() == alive
    await lease.release()  # not ours any more: left alone
    assert await aredis.get(lease.key) == alive.encode().encode()


@pytest.mark.anyio
async def test_a_pinned_name_waits_out_a_holder_it_cannot_check(aredis):
    far = Holder(host="elsewhere", boot="b", pidns="pid:[1]", pid=7, start=1)
    key = keys.worker_name("far")
    await aredis.set(key, far.encode(), px=500)  # it stopped renewing
    lease = await instance.claim(
        aredis, pinned=("far", "WORKER_NAME"), ttl_seconds=1, instance=None
    )
    assert lease.previous is None and await aredis.get(key) == lease.value.encode()
    await lease.release()
    assert not await aredis.exists(key)

    async def renewing() -> None:  # a live worker on another host
        while True:
            await aredis.set(key, far.encode(), px=500)
            await anyio.sleep(0.1)

    await aredis.set(key, far.encode(), px=500)

    async with anyio.create_task_group() as tg:
        tg.start_soon(renewing)
        with pytest.raises(NameTaken, match=r"^WORKER_NAME: "):
            await instance.claim(
                aredis, pinned=("far", "WORKER_NAME"), ttl_seconds=1, instance=None
            )
        tg.cancel_scope.cancel()


def test_lease_value_is_what_redis_cli_shows():
    lease = NameLease(None, "vm-0", ttl_seconds=1, me=Holder("vm", "b", "pid:[2]", 10, 20))  # type: ignore[arg-type]
    assert lease.key == "sw:name:vm-0"
    assert lease.value == '{"host":"vm","boot":"b","pidns":"pid:[2]","pid":10,"start":20}'
