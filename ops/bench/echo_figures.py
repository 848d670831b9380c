"""Figures 1 and 3, with the echo engine (the test double): what the path
itself costs, and how many tokens one gateway process can relay."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ops.bench import load, stack
from streamworker.engines.base import Done, Piece
from streamworker.engines.echo import EchoEngine
from streamworker.protocol.wire import GenerationParams, JobRequest, Message
from streamworker.settings import EngineSettings
from tests.harness import wait_for

PROMPT = "alpha beta gamma delta epsilon zeta eta theta"
ECHO = {"ENGINE": "echo", "MODEL_NAME": "echo"}


async def _inprocess_ttft(requests: int) -> list[float]:
    engine = EchoEngine(EngineSettings(engine="echo", model_name="echo"))
    out = []
    for _ in range(requests):
        t0 = time.perf_counter()
        request = JobRequest(
            messages=[Message("user", PROMPT)], params=GenerationParams(max_tokens=4)
        )
        async for item in engine.generate(request, [], threading.Event()):
            if isinstance(item, Piece) and item.text:
                out.append(time.perf_counter() - t0)
                break
            if isinstance(item, Done):
                break
    return out


def added_latency(server: stack.RedisServer, workdir: Path, requests: int) -> dict:
    """Figure 1: TTFT through gateway + Redis + worker + pub/sub + SSE, one
    request at a time, against calling the same engine in-process."""
    inproc = asyncio.run(_inprocess_ttft(requests))
    with (
        stack.worker(server, workdir, "echo-latency", **ECHO),
        stack.gateway(server, workdir) as gw,
    ):

        async def run() -> list[load.Stream]:
            async with load.session() as s:
                for _ in range(min(20, requests)):  # warm up connections and scripts
                    await load.stream_chat(s, gw.url, "echo", PROMPT, 4)
                return [
                    await load.stream_chat(s, gw.url, "echo", PROMPT, 4) for _ in range(requests)
                ]

        streams = asyncio.run(run())
    path = [s.ttft for s in streams if s.ttft is not None]
    result = {"requests": requests, "errors": sum(not s.ok for s in streams)}
    for name, values in (("inproc", inproc), ("path", path)):
        result[f"{name}_p50_ms"] = 1000 * load.pct(values, 50)
        result[f"{name}_p99_ms"] = 1000 * load.pct(values, 99)
    result["added_p50_ms"] = result["path_p50_ms"] - result["inproc_p50_ms"]
    result["added_p99_ms"] = result["path_p99_ms"] - result["inproc_p99_ms"]
    return result


@dataclass
class RelayLevel:
    clients: int
    tokens_per_stream: int
    interval_ms: float
    wall_s: float
    tokens: int
    errors: int
    incomplete: int
    gateway_cpu_pct: float
    gateway_rss_mib: float
    gateway_peak_rss_mib: float
    worker_cpu_pct: float
    redis_cpu_pct: float
    client_cpu_pct: float
    ttft_p50_ms: float | None
    # Gateway processes on the port (GATEWAY_WORKERS); CPU and RSS are theirs
    # together, the supervisor's included.
    gateway_processes: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def per_gateway_core(self) -> float:
        """Delivered tok/s divided by the share of a core the gateway used:
        what one fully busy gateway process would relay at this cost per token."""
        return self.tokens_per_s / max(self.gateway_cpu_pct / 100, 1e-9)

    @property
    def offered_per_s(self) -> float:
        return self.clients * 1000 / self.interval_ms


def relay_capacity(
    server: stack.RedisServer,
    workdir: Path,
    levels: list[int],
    tokens: int,
    interval_ms: float,
    processes: int = 1,
) -> list[RelayLevel]:
    """Figure 3: N concurrent SSE clients, each job producing a token every
    `interval_ms`, all through one gateway process (or `processes` of them on
    one port, GATEWAY_WORKERS). The echo worker runs every admitted job at
    once (ECHO_CONCURRENT) so the gateway, not the engine, is what is
    measured."""
    results = []
    slots = str(max(levels))
    env = {
        **ECHO,
        "ECHO_CONCURRENT": "1",
        "ECHO_TOKEN_INTERVAL_MS": str(interval_ms),
        "WORKER_CONCURRENCY": slots,
    }
    # Several processes need a Qdrant server address (an embedded store is
    # one process's); nothing listens there, and retrieval is not measured.
    gw_env = {"GATEWAY_WORKERS": str(processes), "QDRANT_URL": "http://127.0.0.1:9"}
    with (
        stack.worker(server, workdir, "echo-relay", **env) as w,
        stack.gateway(server, workdir, **(gw_env if processes > 1 else {})) as gw,
    ):
        if processes > 1:
            wait_for(
                lambda: len(load.ProcTree(gw.pid).members()) == processes + 1,
                what="gateway processes",
            )
            wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 200, what="ready")
        gw_stat, w_stat = load.ProcTree(gw.pid), load.ProcStat(w.pid)
        assert server.proc is not None
        r_stat, me = load.ProcStat(server.proc.pid), load.ProcStat(os.getpid())
        for clients in levels:
            rss_samples: list[float] = []
            stop = threading.Event()

            def sample(
                stat: load.ProcStat = gw_stat,
                out: list[float] = rss_samples,
                done: threading.Event = stop,
            ) -> None:
                while not done.wait(0.2):
                    out.append(stat.rss_mib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            cpu_gw, cpu_w = gw_stat.cpu_seconds(), w_stat.cpu_seconds()
            cpu_r, cpu_me = r_stat.cpu_seconds(), me.cpu_seconds()
            prompts = [f"{PROMPT} client{i}" for i in range(clients)]
            streams, wall = asyncio.run(
                load.concurrent(gw.url, "echo", prompts, tokens, limit_s=120)
            )
            stop.set()
            sampler.join()
            results.append(
                RelayLevel(
                    clients=clients,
                    tokens_per_stream=tokens,
                    interval_ms=interval_ms,
                    wall_s=wall,
                    tokens=sum(s.tokens for s in streams if s.ok),
                    errors=sum(bool(s.error) for s in streams),
                    incomplete=sum(s.ok and s.tokens != tokens for s in streams),
                    gateway_cpu_pct=100 * (gw_stat.cpu_seconds() - cpu_gw) / wall,
                    gateway_rss_mib=max(rss_samples, default=gw_stat.rss_mib()),
                    gateway_peak_rss_mib=gw_stat.peak_rss_mib(),
                    worker_cpu_pct=100 * (w_stat.cpu_seconds() - cpu_w) / wall,
                    redis_cpu_pct=100 * (r_stat.cpu_seconds() - cpu_r) / wall,
                    client_cpu_pct=100 * (me.cpu_seconds() - cpu_me) / wall,
                    ttft_p50_ms=(
                        1000 * v
                        if (v := load.pct([s.ttft for s in streams if s.ttft is not None], 50))
                        else None
                    ),
                    gateway_processes=processes,
                )
            )
    return results


def relay_by_processes(
    server: stack.RedisServer,
    workdir: Path,
    clients: int,
    processes: list[int],
    tokens: int,
    interval_ms: float,
) -> list[RelayLevel]:
    """Figure 3b: figure 3 at `clients`, with 1, 2, ... gateway processes."""
    return [
        level
        for n in processes
        for level in relay_capacity(server, workdir, [clients], tokens, interval_ms, n)
    ]
