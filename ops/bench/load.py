"""Load generation and measurement: SSE streaming clients, percentiles, and
per-process CPU and memory read from /proc. All load goes to 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import msgspec

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Stream:
    """One streamed completion as the client saw it."""

    ok: bool = False
    error: str = ""
    ttft: float | None = None  # request sent -> first non-empty content
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    tokens: int = 0  # from usage when the server sends it, else content chunks
    finish: str | None = None

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first one: the engine's pace as the
        client receives it (TTFT is reported on its own)."""
        if self.tokens < 2 or self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


async def stream_chat(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    system: str | None = None,
) -> Stream:
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = Stream()
    t0 = time.perf_counter()
    usage_tokens: int | None = None
    try:
        async with session.post(base_url + "/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                out.error = f"HTTP {resp.status}"
                return out
            buf = b""
            done = False
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                buf += data.replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue  # keep-alive comment
                    payload = event[6:]
                    if payload == b"[DONE]":
                        done = True
                        continue
                    if (
                        b'"content":"' in payload
                        and b'"content":""' not in payload
                        and b'"finish_reason":null' in payload
                    ):
                        # A plain token chunk from our gateway: no need to parse
                        # it (the client must not be what the relay test measures).
                        out.chunks += 1
                        if out.first is None:
                            out.first, out.ttft = now, now - t0
                        out.last = now
                        continue
                    msg = msgspec.json.decode(payload)
                    if "error" in msg:
                        out.error = str(msg["error"].get("message", "error"))[:200]
                        continue
                    if msg.get("usage"):
                        usage_tokens = msg["usage"].get("completion_tokens")
                    for choice in msg.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            out.chunks += 1
                            if out.first is None:
                                out.first, out.ttft = now, now - t0
                            out.last = now
                        if choice.get("finish_reason"):
                            out.finish = choice["finish_reason"]
            out.tokens = usage_tokens if usage_tokens is not None else out.chunks
            out.ok = done and out.finish is not None and not out.error
            if not out.ok and not out.error:
                out.error = "stream ended early" if not done else "no finish_reason"
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    return out


def session(n_connections: int = 0, timeout: float = 300.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n_connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def concurrent(
    base_url: str,
    model: str,
    prompts: list[str],
    max_tokens: int,
    limit_s: float = 300.0,
) -> tuple[list[Stream], float]:
    """All prompts at once; returns the streams and the wall time of the round."""
    async with session(timeout=limit_s) as s:
        t0 = time.perf_counter()
        streams = await asyncio.gather(
            *(stream_chat(s, base_url, model, p, max_tokens) for p in prompts)
        )
        return list(streams), time.perf_counter() - t0


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class ProcStat:
    """CPU seconds and memory of one process, from /proc."""

    pid: int
    samples: list[int] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return self.status_kib("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return self.status_kib("VmHWM") / 1024


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@dataclass
class ProcTree:
    """CPU seconds and memory of a process and its children (a supervised
    gateway: the supervisor and its processes), from /proc."""

    pid: int

    def members(self) -> list[ProcStat]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                kids = [int(p) for p in f.read().split()]
        except OSError:
            kids = []
        return [ProcStat(self.pid), *(ProcStat(k) for k in kids)]

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.members())

    def rss_mib(self) -> float:
        return sum(p.rss_mib() for p in self.members())

    def peak_rss_mib(self) -> float:
        return sum(p.peak_rss_mib() for p in self.members())
