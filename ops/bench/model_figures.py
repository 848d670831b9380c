"""Figures 2, 4 and 5, with the bundled model: single-stream speed through
the path against in-process llama-cpp-python and the peer, aggregate speed
with concurrent clients, and worker memory."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ops.bench import load, stack
from streamworker.engines.base import Piece
from streamworker.protocol.wire import GenerationParams, JobRequest, Message
from streamworker.tokenizer import renderer

# Different prompts, each of which runs to max_tokens on the bundled base
# model at temperature 0 (no early end of turn), so every stream does the
# same amount of work.
PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Count from 1 to 10.",
    "Tell me a joke about cats.",
    "Why is the sky blue?",
    "List three colors.",
    "What is 2+2?",
    "Name a famous painter.",
]
MODEL = "gemma-3-270m"


@dataclass
class Single:
    """One stream at a time, repeated: medians over the repeats."""

    name: str
    ttft_ms: float | None
    tok_s: float | None
    tokens: int
    note: str = ""


@dataclass
class Round:
    """`clients` streams at once."""

    name: str
    clients: int
    wall_s: float
    tokens: int
    completed: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    errors: list[str]

    @property
    def aggregate(self) -> float:
        return self.tokens / self.wall_s


def _single(name: str, streams: list[load.Stream], note: str = "") -> Single:
    rates = [r for s in streams if (r := s.decode_rate) is not None]
    ttfts = [s.ttft for s in streams if s.ttft is not None]
    return Single(
        name,
        1000 * t if (t := load.median(ttfts)) else None,
        load.median(rates),
        max((s.tokens for s in streams), default=0),
        note,
    )


def _round(name: str, clients: int, streams: list[load.Stream], wall: float, tokens: int) -> Round:
    ttfts = [s.ttft for s in streams if s.ttft is not None]
    return Round(
        name,
        clients,
        wall,
        sum(s.tokens for s in streams if s.ok),
        sum(s.ok and s.tokens == tokens for s in streams),
        1000 * v if (v := load.pct(ttfts, 50)) else None,
        1000 * v if (v := load.pct(ttfts, 95)) else None,
        sorted({s.error for s in streams if s.error}),
    )


def inprocess_highlevel(
    model_path: str, threads: int, n_ctx: int, tokens: int, repeats: int
) -> Single:
    """llama-cpp-python's high-level API, streaming, no server in between."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="ignore")
    bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore")
    render = renderer(llm.metadata, eos, bos)
    streams = []
    for i in range(repeats + 1):  # the first is a warm-up
        prompt, stops = render([Message("user", PROMPTS[i % len(PROMPTS)])])
        llm.reset()
        out = load.Stream()
        t0 = time.perf_counter()
        for chunk in llm.create_completion(
            prompt, max_tokens=tokens, temperature=0.0, stream=True, stop=stops
        ):
            now = time.perf_counter()
            out.tokens += 1  # one token per chunk on this API
            if out.first is None:
                out.first, out.ttft = now, now - t0
            out.last = now
            out.finish = chunk["choices"][0]["finish_reason"] or out.finish
        out.ok = True
        if i:
            streams.append(out)
    llm.close()
    return _single("llama-cpp-python in-process, high-level API", streams)


def inprocess_batched(
    model_path: str,
    threads: int,
    n_ctx: int,
    tokens: int,
    repeats: int,
    levels: list[int],
    *,
    batch_invariant: bool = True,
) -> tuple[Single, list[Round]]:
    """The batched engine called directly: the engine's own limit in Python.
    batch_invariant=False: ggml's repacked kernels and one decode for all
    sequences (answers then depend on the load; see batched.py)."""
    from streamworker.engines.batched import BatchedEngine
    from streamworker.settings import EngineSettings

    engine = BatchedEngine(
        EngineSettings(
            engine="batched",
            model_path=model_path,
            model_n_threads=threads,
            model_n_ctx=n_ctx,
            slots=max(levels),
            batch_invariant=batch_invariant,
        ),
    )
    label = "batched engine in-process" + (
        "" if batch_invariant else ", fast kernels (load-dependent answers)"
    )
    params = GenerationParams(max_tokens=tokens, temperature=0.0)

    async def one(prompt: str) -> load.Stream:
        out = load.Stream()
        t0 = time.perf_counter()
        request = JobRequest(messages=[Message("user", prompt)], params=params)
        async for item in engine.generate(request, [], threading.Event()):
            now = time.perf_counter()
            if isinstance(item, Piece):
                if item.token >= 0:
                    out.tokens += 1
                if out.first is None:
                    out.first, out.ttft = now, now - t0
                out.last = now
        out.ok = True
        return out

    async def main() -> tuple[list[load.Stream], list[Round]]:
        singles = [await one(PROMPTS[i % len(PROMPTS)]) for i in range(repeats + 1)][1:]
        rounds = []
        for n in levels:
            t0 = time.perf_counter()
            streams = await asyncio.gather(*(one(PROMPTS[i % len(PROMPTS)]) for i in range(n)))
            rounds.append(_round(label, n, list(streams), time.perf_counter() - t0, tokens))
        return singles, rounds

    try:
        singles, rounds = asyncio.run(main())
    finally:
        engine.close()
    return _single(label + " (low-level API)", singles), rounds


def through_path(
    server: stack.RedisServer,
    workdir: Path,
    name: str,
    engine: str,
    slots: int,
    env: dict[str, str],
    tokens: int,
    repeats: int,
    levels: list[int],
) -> tuple[Single, list[Round], dict[str, float]]:
    """A worker with `engine` behind the gateway: single streams, then rounds
    of concurrent clients; the worker's memory after the last round."""
    with (
        stack.worker(
            server,
            workdir,
            f"{engine}-{slots}",
            ENGINE=engine,
            WORKER_CONCURRENCY=str(slots),
            MODEL_NAME=MODEL,
            **env,
        ) as w,
        stack.gateway(server, workdir) as gw,
    ):

        async def singles() -> list[load.Stream]:
            async with load.session() as s:
                return [
                    await load.stream_chat(s, gw.url, MODEL, PROMPTS[i % len(PROMPTS)], tokens)
                    for i in range(repeats + 1)
                ][1:]

        single = _single(name, asyncio.run(singles()))
        rounds = []
        for n in levels:
            streams, wall = asyncio.run(
                load.concurrent(
                    gw.url, MODEL, [PROMPTS[i % len(PROMPTS)] for i in range(n)], tokens
                )
            )
            rounds.append(_round(name, n, streams, wall, tokens))
        stat = load.ProcStat(w.pid)
        memory = {"rss_mib": stat.rss_mib(), "peak_rss_mib": stat.peak_rss_mib()}
    return single, rounds, memory


def peer(
    model_path: str,
    threads: int,
    n_ctx: int,
    workdir: Path,
    tokens: int,
    repeats: int,
    levels: list[int],
) -> tuple[Single, list[Round]]:
    """llama_cpp.server: the same engine behind its own FastAPI server."""
    with stack.peer_server(model_path, threads, n_ctx, workdir) as url:

        async def singles() -> list[load.Stream]:
            async with load.session() as s:
                return [
                    await load.stream_chat(s, url, "peer", PROMPTS[i % len(PROMPTS)], tokens)
                    for i in range(repeats + 1)
                ][1:]

        single = _single("llama_cpp.server (the peer)", asyncio.run(singles()))
        rounds = []
        for n in levels:
            streams, wall = asyncio.run(
                load.concurrent(url, "peer", [PROMPTS[i % len(PROMPTS)] for i in range(n)], tokens)
            )
            rounds.append(_round("llama_cpp.server", n, streams, wall, tokens))
    return single, rounds
