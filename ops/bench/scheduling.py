"""`just bench --only-scheduling`: what the scheduler does and costs, with the
echo engine (the test double, a fixed token rate).

(a) priority and default jobs' queue wait with 500 flex jobs queued, against
    an idle system; (b) key A floods 1,000 jobs, key B then sends 10: B's
    queue wait, and each key's share of starts while both were backlogged
    (equal weights, then B at weight 3); (c) the scheduler's cost: the
    enqueue script against the run-stream XADD it replaced, a dispatch
    against a plain XREADGROUP, TTFT through the path (figure 1) and the
    relay at 1000 clients (figure 3).

Queue wait = the job record's started_at - created_at (ms, written by the
scripts), so it is the queue's, not HTTP's. The jobs are enqueued by the
protocol client in this process, as the gateway does.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from ops.bench import echo_figures, load, stack
from streamworker.protocol import keys
from streamworker.protocol.client import JobClient
from streamworker.protocol.consumer import JobConsumer
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import lua_vocabulary
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings
from streamworker.protocol.wire import GenerationParams, JobRequest, Message

MODEL = "echo"
# The enqueue script before the scheduler (one FIFO run stream), for (c).
BASELINE_COMMIT = "bfea000"
BASELINE_ENQUEUE = "streamworker/protocol/lua/enqueue.lua"


def _request(tokens: int) -> JobRequest:
    return JobRequest(
        messages=[Message("user", "alpha beta gamma")], params=GenerationParams(max_tokens=tokens)
    )


def _worker_env(slots: int, interval_ms: float) -> dict[str, str]:
    return {
        "ENGINE": "echo",
        "MODEL_NAME": MODEL,
        "ECHO_CONCURRENT": "1",
        "ECHO_TOKEN_INTERVAL_MS": str(interval_ms),
        "WORKER_CONCURRENCY": str(slots),
    }


class Bench:
    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url)
        self.scripts = Scripts(self.redis)
        self.jobs = JobClient(self.redis, self.scripts, QueueSettings())
        self.n = 0

    async def add(self, tier: str, owner: str, tokens: int, weight: float = 1.0) -> str:
        self.n += 1
        job_id = f"b-{self.n}"
        await self.jobs.enqueue(
            MODEL, job_id, _request(tokens), owner=owner, tier=tier, weight=weight
        )
        return job_id

    async def records(self, ids: list[str], within: float) -> list[dict[bytes, bytes]]:
        """Each job's record once all have ended."""
        k = model_keys(MODEL)
        deadline = time.monotonic() + within
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                for j in ids:
                    pipe.hgetall(k.job(j))
                recs = await pipe.execute()
            if all(r.get(b"status") in (b"completed", b"failed", b"expired") for r in recs):
                return recs
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(b'finished_at' in r for r in recs)}/{len(ids)} ended")
            await asyncio.sleep(0.1)


def _wait_ms(rec: dict[bytes, bytes]) -> float:
    return float(int(rec[b"started_at"]) - int(rec[b"created_at"]))


def _pcts(values: list[float]) -> dict[str, float]:
    return {"p50": load.pct(values, 50), "p99": load.pct(values, 99), "n": len(values)}


def tiers_figure(server: stack.RedisServer, workdir: Path, smoke: bool) -> dict[str, Any]:
    """(a) 20 priority and 20 default jobs, one of each every 100 ms (half the
    slots' capacity), on an idle
    system and then with 500 flex jobs queued (4 slots, 20 tokens at 5 ms:
    a job runs ~100 ms)."""
    flex_n = 20 if smoke else 500
    probes = 4 if smoke else 20
    slots, tokens, interval = 4, 20, 5.0

    async def probe(b: Bench, tier: str) -> list[str]:
        ids = []
        for _ in range(probes):
            ids.append(await b.add(tier, "probe", tokens))
            await asyncio.sleep(0.1)
        return ids

    async def run(url: str, flex: int) -> dict[str, Any]:
        b = Bench(url)
        try:
            flex_ids = [await b.add("flex", "batch", tokens) for _ in range(flex)]
            await asyncio.sleep(0.3)  # the slots are busy with flex by now
            pri, dflt = await asyncio.gather(probe(b, "priority"), probe(b, "default"))
            recs = await b.records(pri + dflt, within=120)
            out = {
                "priority": _pcts([_wait_ms(r) for r in recs[:probes]]),
                "default": _pcts([_wait_ms(r) for r in recs[probes:]]),
            }
            if flex_ids:
                left = await b.redis.zcard(model_keys(MODEL).age("flex"))
                out["flex_waiting_at_end"] = left
                await b.records(flex_ids, within=300)
            return out
        finally:
            await b.redis.aclose()

    env = _worker_env(slots, interval)
    result: dict[str, Any] = {"slots": slots, "tokens": tokens, "interval_ms": interval}
    with stack.worker(server, workdir, "sched-tiers", **env):
        result["idle"] = asyncio.run(run(server.url, 0))
    with stack.worker(server, workdir, "sched-tiers-2", **env):
        result["flex_backlog"] = asyncio.run(run(server.url, flex_n))
    result["flex_jobs"] = flex_n
    return result


def fairness_figure(server: stack.RedisServer, workdir: Path, smoke: bool) -> dict[str, Any]:
    """(b) A floods 1,000 jobs, then B sends 10 (equal weights); then A
    (weight 1) and B (weight 3) both flood. 4 slots, 5 tokens at 5 ms (a job
    runs ~25 ms). Shares count starts (the run stream's entry order, which
    is the dispatch order) between B's first and last start, while both
    were backlogged."""
    flood = 50 if smoke else 1000
    slots, tokens, interval = 4, 5, 5.0

    def shares(recs: dict[str, dict[bytes, bytes]]) -> dict[str, Any]:
        order = sorted(recs, key=lambda j: tuple(map(int, recs[j][b"entry_id"].split(b"-"))))
        owners = [recs[j][b"owner"].decode() for j in order]
        first, last = owners.index("b"), len(owners) - 1 - owners[::-1].index("b")
        window = owners[first : last + 1]
        # A's jobs that started after B's first job was queued and before it started.
        b_arrived = min(int(recs[j][b"created_at"]) for j in order if owners[order.index(j)] == "b")
        ahead = sum(
            1 for j in order[:first] if int(recs[j].get(b"dispatched_at", b"0") or 0) >= b_arrived
        )
        return {"a": window.count("a"), "b": window.count("b"), "a_ahead_of_b": ahead}

    async def run(url: str, b_jobs: int, b_weight: float) -> dict[str, Any]:
        bench = Bench(url)
        try:
            a_ids = [await bench.add("default", "a", tokens) for _ in range(flood)]
            b_ids = [await bench.add("default", "b", tokens, b_weight) for _ in range(b_jobs)]
            recs = await bench.records(a_ids + b_ids, within=300)
            by_id = dict(zip(a_ids + b_ids, recs, strict=True))
            b_waits = [_wait_ms(by_id[j]) for j in b_ids]
            run_ms = [
                int(r[b"finished_at"]) - int(r[b"started_at"])
                for r in recs
                if b"finished_at" in r and b"started_at" in r
            ]
            return {
                "b_wait": _pcts(b_waits),
                "b_first_wait_ms": b_waits[0],
                "job_run_ms_p50": load.pct([float(x) for x in run_ms], 50),
                "shares": shares(by_id),
                "b_weight": b_weight,
                "b_jobs": b_jobs,
            }
        finally:
            await bench.redis.aclose()

    env = _worker_env(slots, interval)
    out: dict[str, Any] = {"flood": flood, "slots": slots, "tokens": tokens}
    with stack.worker(server, workdir, "sched-fair", **env):
        out["b_sends_10"] = asyncio.run(run(server.url, 10, 1.0))
    with stack.worker(server, workdir, "sched-fair-2", **env):
        out["weighted"] = asyncio.run(run(server.url, flood // 3, 3.0))
    return out


def _baseline_enqueue_source() -> str | None:
    """The enqueue script of the one-FIFO design, from git (None without git)."""
    try:
        lua = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:{BASELINE_ENQUEUE}"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return lua_vocabulary() + "\n" + lua


def script_costs(server: stack.RedisServer, smoke: bool) -> dict[str, Any]:
    """(c) One enqueue, sequentially, into an empty and a 1,000-job queue:
    today's enqueue.lua against the old one (XADD to the run stream); one
    dispatch against the XREADGROUP it replaced."""
    n = 200 if smoke else 3000

    async def run() -> dict[str, Any]:
        b = Bench(server.url)
        out: dict[str, Any] = {"calls": n}
        try:
            await b.redis.flushall()
            k = model_keys(MODEL)
            consumer = JobConsumer(b.redis, b.scripts, QueueSettings(), model=MODEL, name="c")
            await consumer.ensure_group()
            req = _request(4)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await b.jobs.enqueue(MODEL, f"e-{b.n}", req, owner="k", tier="default")
                times.append(1000 * (time.perf_counter() - t0))
                b.n += 1
            out["enqueue_ms"] = _pcts(times)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await consumer.read(1, None)
                times.append(1000 * (time.perf_counter() - t0))
            out["dispatch_ms"] = _pcts(times)
            old = _baseline_enqueue_source()
            if old is not None:
                await b.redis.flushall()
                await consumer.ensure_group()
                script = b.redis.register_script(old)
                times = []
                for i in range(n):
                    t0 = time.perf_counter()
                    job_id = f"o-{i}"
                    await b.redis.set(keys.job_model(job_id), MODEL, ex=600)
                    await script(
                        keys=[k.stream, k.job(job_id), k.queued, k.idempotency("k", "-")],
                        args=[job_id, MODEL, b"{}", 1, 2, 0, 60, 0, "k", "chat"],
                    )
                    times.append(1000 * (time.perf_counter() - t0))
                out["old_enqueue_ms"] = _pcts(times)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    await b.redis.xreadgroup(keys.GROUP, "c", {k.stream: ">"}, count=1)
                    times.append(1000 * (time.perf_counter() - t0))
                out["old_read_ms"] = _pcts(times)
            await b.redis.flushall()
        finally:
            await b.redis.aclose()
        return out

    return asyncio.run(run())


def run(workdir: Path, smoke: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"loadavg_start": load.loadavg()}
    with stack.redis(workdir) as server:
        results["tiers"] = tiers_figure(server, workdir, smoke)
        results["fair"] = fairness_figure(server, workdir, smoke)
        results["scripts"] = script_costs(server, smoke)
        results["latency"] = echo_figures.added_latency(server, workdir, 20 if smoke else 300)
        results["relay"] = echo_figures.relay_capacity(
            server, workdir, [10 if smoke else 1000], tokens=10 if smoke else 300, interval_ms=20.0
        )[0]
    results["loadavg_end"] = load.loadavg()
    return results


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50']:.0f} / {p['p99']:.0f}"


def _ms2(p: dict[str, float]) -> str:
    return f"{p['p50']:.3f} / {p['p99']:.3f}"


def section(res: dict[str, Any], when: str) -> list[str]:
    t, f, s = res["tiers"], res["fair"], res["scripts"]
    lines = [
        "## Scheduling: tiers, fair shares, overhead (echo engine)",
        "",
        when,
        "",
        f"(a) 20 `priority` and 20 `default` jobs, one of each every 100 ms (half the "
        f"capacity), into a worker with "
        f"{t['slots']} slots (echo, {t['tokens']} tokens at {t['interval_ms']} ms: a job runs "
        f"~{t['tokens'] * t['interval_ms']:.0f} ms): on an idle system, then with "
        f"{t['flex_jobs']} `flex` jobs queued first. Queue wait = started_at - created_at.",
        "",
        "| system | priority wait p50 / p99 (ms) | default wait p50 / p99 (ms) |",
        "|---|---|---|",
        f"| idle | {_ms(t['idle']['priority'])} | {_ms(t['idle']['default'])} |",
        f"| {t['flex_jobs']} flex queued | {_ms(t['flex_backlog']['priority'])} | "
        f"{_ms(t['flex_backlog']['default'])} |",
        "",
        f"Flex jobs still waiting when the last probe had started: "
        f"{t['flex_backlog'].get('flex_waiting_at_end', '-')} (they completed afterwards).",
        "",
    ]
    for name, title in (
        ("b_sends_10", "A floods, B then sends 10 (equal weights)"),
        ("weighted", "A (weight 1) and B (weight 3) both flood"),
    ):
        r = f[name]
        sh = r["shares"]
        total = sh["a"] + sh["b"]
        want_b = r["b_weight"] / (1 + r["b_weight"])
        lines += [
            f"(b) {title}: A queues {f['flood']} jobs, then B queues {r['b_jobs']}; "
            f"{f['slots']} slots, {f['tokens']} tokens at 5 ms (a job runs "
            f"{r['job_run_ms_p50']:.0f} ms, p50).",
            "",
            "| B's queue wait p50 / p99 (ms) | B's first job's wait (ms) | A's jobs started "
            "between B's arrival and B's first start | starts while both backlogged: A / B | "
            "B's share | B's weight share |",
            "|---|---|---|---|---|---|",
            f"| {_ms(r['b_wait'])} | {r['b_first_wait_ms']:.0f} | {sh['a_ahead_of_b']} | "
            f"{sh['a']} / {sh['b']} | "
            f"{sh['b'] / max(total, 1):.2f} | {want_b:.2f} |",
            "",
        ]
    lines += [
        f"(c) The scheduler's cost. Scripts: {s['calls']} sequential calls from one client, "
        "into a queue that grows as it goes (enqueue), then draining it (dispatch).",
        "",
        "| step | now p50 / p99 (ms) | one FIFO stream before p50 / p99 (ms) |",
        "|---|---|---|",
        f"| enqueue (gateway) | {_ms2(s['enqueue_ms'])} | "
        f"{_ms2(s['old_enqueue_ms']) if 'old_enqueue_ms' in s else '-'} |",
        f"| take a job (worker: dispatch.lua vs XREADGROUP) | {_ms2(s['dispatch_ms'])} | "
        f"{_ms2(s['old_read_ms']) if 'old_read_ms' in s else '-'} |",
        "",
    ]
    lat, rel = res["latency"], res["relay"]
    lines += [
        "Through the whole path, against figures 1 and 3 above (measured before the scheduler):",
        "",
        "| figure | with the scheduler |",
        "|---|---|",
        f"| 1. TTFT through the path p50 / p99 (ms) | {lat['path_p50_ms']:.2f} / "
        f"{lat['path_p99_ms']:.2f} (added by the path {lat['added_p50_ms']:.2f} / "
        f"{lat['added_p99_ms']:.2f}) |",
        f"| 3. relay at {rel.clients} clients (delivered tok/s, errors, incomplete) | "
        f"{rel.tokens_per_s:.0f}, {rel.errors}, {rel.incomplete} |",
        "",
    ]
    return lines
