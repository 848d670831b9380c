"""One Redis vs a three-master Redis Cluster on this machine (`just bench
--only-cluster`): enqueue throughput, relay tokens/s, what REDIS_WAIT_REPLICAS
costs per enqueue, and how many accepted jobs a master's kill -9 loses
without it. Every node runs on this one host, so the figures show the
cluster's overhead, not its scaling."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ops.bench import load
from streamworker.protocol import keys
from streamworker.protocol.client import JobClient
from streamworker.protocol.connections import confirm, connect
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings, RedisSettings
from streamworker.protocol.wire import GenerationParams, JobRequest, Message
from tests.harness import Gateway, RedisClusterServer, RedisServer, Worker, wait_for

ECHO = {"ENGINE": "echo", "MODEL_NAME": "echo-test"}
Server = RedisServer | RedisClusterServer


@contextlib.contextmanager
def servers(workdir: Path) -> Iterator[tuple[RedisServer, RedisClusterServer]]:
    single = RedisServer(workdir / "single")
    cluster = RedisClusterServer(workdir / "cluster")
    try:
        single.start()
        cluster.start()
        yield single, cluster
    finally:
        cluster.stop()
        single.stop()


def spread_models(cluster: RedisClusterServer) -> list[str]:
    """One model per master (the same names are used on the single Redis)."""
    found: dict[int, str] = {}
    for n in range(500):
        found.setdefault(cluster.owner(keys.tag(f"bench-{n}")), f"bench-{n}")
        if len(found) == cluster.masters:
            break
    return list(found.values())


async def _enqueue_rate(url: str, models: list[str], jobs: int, in_flight: int) -> float:
    """Jobs/s for `jobs` enqueues spread over `models`, `in_flight` at a time,
    from one asyncio client (the gateway's own code path)."""
    redis = await connect(RedisSettings(redis_url=url))
    client = JobClient(redis, Scripts(redis), QueueSettings())
    request = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=1))
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            await client.enqueue(models[i % len(models)], f"job-{i}", request)

    try:
        await client.enqueue(models[0], "warm-up", request)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(jobs)))
        return jobs / (time.perf_counter() - t0)
    finally:
        await redis.aclose()


async def _enqueue_latency(url: str, model: str, n: int, replicas: int) -> list[float]:
    """Milliseconds per enqueue, one at a time, confirmed with WAIT when
    `replicas` > 0 (what the gateway does under REDIS_WAIT_REPLICAS)."""
    redis = await connect(RedisSettings(redis_url=url))
    client = JobClient(redis, Scripts(redis), QueueSettings())
    request = JobRequest(messages=[Message("user", "hi")], params=GenerationParams(max_tokens=1))
    out = []
    try:
        for i in range(n):
            job_id = f"lat-{replicas}-{i}"
            t0 = time.perf_counter()
            await client.enqueue(model, job_id, request)
            if replicas:
                acked = await confirm(
                    redis,
                    [keys.model_keys(model).job(job_id), keys.job_model(job_id)],
                    replicas,
                    1000,
                )
                assert acked >= replicas
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        await redis.aclose()


def flush(server: Server) -> None:
    server.flush()


def relay_rate(server: Server, workdir: Path, streams: int, tokens: int) -> float:
    """Tokens/s received by `streams` concurrent SSE clients of one gateway,
    fed by one echo worker with no pacing."""
    flush(server)
    worker = Worker(
        server.url,
        workdir / f"relay-worker-{time.monotonic_ns()}.log",
        f"bench-{time.monotonic_ns()}",
        **ECHO,
        WORKER_CONCURRENCY=str(streams),
        ECHO_TOKEN_INTERVAL_MS="0",
        ECHO_CONCURRENT="true",
    )
    gw = Gateway(server.url, workdir / f"relay-gateway-{time.monotonic_ns()}.log")
    try:
        worker.start(redis=server)
        gw.start()
        prompts = [f"word{i} other" for i in range(streams)]
        got, wall = asyncio.run(load.concurrent(gw.url, "echo-test", prompts, tokens))
        assert all(s.ok for s in got), [s.error for s in got if not s.ok][:3]
        return sum(s.tokens for s in got) / wall
    finally:
        gw.stop()
        worker.stop()


def lost_after_kill(
    cluster: RedisClusterServer, workdir: Path, trials: int, replicas: int
) -> list[int]:
    """Per trial: jobs that got a 202 before kill -9 of the model's master
    and that the promoted replica does not have (404 afterwards)."""
    lost: list[int] = []
    flush(cluster)
    worker = Worker(cluster.url, workdir / "loss-worker.log", "loss", **ECHO, JOB_LEASE_SECONDS="2")
    gw = Gateway(
        cluster.url,
        workdir / "loss-gateway.log",
        REDIS_WAIT_REPLICAS=str(replicas),
        JOB_LEASE_SECONDS="2",
    )
    body = {"model": "echo-test", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    try:
        worker.start(redis=cluster)
        gw.start()
        for _ in range(trials):
            accepted: list[str] = []
            killed = threading.Event()

            def submit(accepted: list[str] = accepted, killed: threading.Event = killed) -> None:
                with httpx.Client(base_url=gw.url, timeout=10) as http:
                    while not killed.is_set():
                        with contextlib.suppress(httpx.HTTPError):
                            resp = http.post("/v1/jobs", json=body)
                            if resp.status_code == 202 and not killed.is_set():
                                accepted.append(resp.json()["id"])

            owner = cluster.owner(keys.tag("echo-test"))
            t = threading.Thread(target=submit)
            t.start()
            time.sleep(0.5)
            cluster.kill(owner)
            killed.set()
            t.join(30)
            try:
                wait_for(
                    lambda: httpx.get(gw.url + "/ready", timeout=5).status_code == 200,
                    timeout=60,
                    what="ready after the failover",
                )
            except TimeoutError:
                # Reported as a failed trial (-1), with the processes' logs kept.
                lost.append(-1)
                keep = Path(tempfile.mkdtemp(prefix="bench-cluster-failed-"))
                for log in (worker.log, gw.log):
                    shutil.copy(log, keep)
                print(f"trial failed; logs in {keep}", file=sys.stderr, flush=True)
            else:
                with httpx.Client(base_url=gw.url, timeout=10) as http:
                    lost.append(sum(http.get(f"/v1/jobs/{i}").status_code == 404 for i in accepted))
            print(f"replicas={replicas} trial {len(lost)}: lost {lost[-1]}", file=sys.stderr)
            cluster.revive(owner)
        return lost
    finally:
        gw.stop()
        worker.stop()


def run(workdir: Path, smoke: bool) -> dict[str, Any]:
    jobs = 500 if smoke else 20_000
    streams, tokens = (4, 20) if smoke else (64, 500)
    trials = 2 if smoke else 20
    out: dict[str, Any] = {"loadavg_start": load.loadavg()}
    with servers(workdir) as (single, cluster):
        models = spread_models(cluster)
        for name, server in (("single", single), ("cluster", cluster)):
            flush(server)
            out[f"enqueue_{name}"] = asyncio.run(_enqueue_rate(server.url, models, jobs, 64))
            flush(server)
            out[f"relay_{name}"] = relay_rate(server, workdir, streams, tokens)
            print(
                f"{name}: {out[f'enqueue_{name}']:.0f} jobs/s, {out[f'relay_{name}']:.0f} tok/s",
                file=sys.stderr,
                flush=True,
            )
        for replicas in (0, 1):
            flush(cluster)
            ms = asyncio.run(
                _enqueue_latency(cluster.url, models[0], 200 if smoke else 2000, replicas)
            )
            out[f"latency_wait{replicas}"] = (statistics.median(ms), load.pct(ms, 99))
            print(
                f"latency {replicas}: {out[f'latency_wait{replicas}']}", file=sys.stderr, flush=True
            )
        out["lost_wait0"] = lost_after_kill(cluster, workdir, trials, 0)
        out["lost_wait1"] = lost_after_kill(cluster, workdir, max(1, trials // 4), 1)
    out["loadavg_end"] = load.loadavg()
    out["jobs"], out["streams"], out["tokens"] = jobs, streams, tokens
    return out


def section(r: dict[str, Any], when: str) -> list[str]:
    def f(x: float) -> str:
        return f"{x:,.0f}"

    lat0, lat1 = r["latency_wait0"], r["latency_wait1"]
    return [
        "## Redis Cluster: overhead on one machine",
        "",
        when,
        "",
        "Three masters and three replicas of redis-server on loopback (the test harness's",
        "cluster), against one redis-server, on the same machine. Every node shares the same",
        "cores, so this shows what the cluster costs, not what it scales to.",
        "",
        "| | one Redis | 3-master cluster |",
        "|---|---:|---:|",
        f"| enqueue, jobs/s ({r['jobs']:,} jobs over 3 models, 64 in flight, one client) "
        f"| {f(r['enqueue_single'])} | {f(r['enqueue_cluster'])} |",
        f"| relay, tokens/s ({r['streams']} streams x {r['tokens']} tokens, 1 gateway, "
        f"1 echo worker) | {f(r['relay_single'])} | {f(r['relay_cluster'])} |",
        "",
        "REDIS_WAIT_REPLICAS on the cluster, one enqueue at a time:",
        "",
        "| REDIS_WAIT_REPLICAS | enqueue median | p99 |",
        "|---:|---:|---:|",
        f"| 0 | {lat0[0]:.2f} ms | {lat0[1]:.2f} ms |",
        f"| 1 | {lat1[0]:.2f} ms | {lat1[1]:.2f} ms |",
        "",
        f"kill -9 of the model's master while one client submits jobs as fast as it can: "
        f"accepted (202) jobs missing after the replica took over, per trial: "
        f"REDIS_WAIT_REPLICAS=0: {r['lost_wait0']} over {len(r['lost_wait0'])} trials "
        f"(total {sum(n for n in r['lost_wait0'] if n > 0)}); REDIS_WAIT_REPLICAS=1: "
        f"{r['lost_wait1']} (-1: the gateway was not ready again within 60 s).",
    ]
