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
# The worker as installed: no ENGINE, WORKER_CONCURRENCY or BATCH_INVARIANT set.
DEFAULT_NAME = "through the path, default settings (batched, auto = 4 slots, invariant)"


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


def _median_round(rounds: list[Round]) -> Round:
    """Of rounds at one level, the one with the median aggregate: one round
    of a few seconds moves by several percent with the machine's noise."""
    return sorted(rounds, key=lambda r: r.aggregate)[(len(rounds) - 1) // 2]


def _level_prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


def _over_http(
    url: str, model: str, name: str, round_name: str, tokens: int, repeats: int, levels: list[int]
) -> tuple[Single, list[Round]]:
    """Single streams against an OpenAI-style server (the first one warms it
    up), then at each level the median of `repeats` rounds of that many
    concurrent clients."""

    async def singles() -> list[load.Stream]:
        async with load.session() as s:
            return [
                await load.stream_chat(s, url, model, prompt, tokens)
                for prompt in _level_prompts(repeats + 1)
            ][1:]

    single = _single(name, asyncio.run(singles()))
    rounds = []
    for n in levels:
        tries = [
            _round(
                round_name,
                n,
                *asyncio.run(load.concurrent(url, model, _level_prompts(n), tokens)),
                tokens,
            )
            for _ in range(max(repeats, 1))
        ]
        rounds.append(_median_round(tries))
    return single, rounds


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
    label = "batched engine in-process" + ("" if batch_invariant else ", BATCH_INVARIANT=false")
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
        singles = [await one(p) for p in _level_prompts(repeats + 1)][1:]
        rounds = []
        for n in levels:
            tries = []
            for _ in range(max(repeats, 1)):
                t0 = time.perf_counter()
                streams = await asyncio.gather(*(one(p) for p in _level_prompts(n)))
                tries.append(_round(label, n, list(streams), time.perf_counter() - t0, tokens))
            rounds.append(_median_round(tries))
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
    worker_env: dict[str, str],
    tokens: int,
    repeats: int,
    levels: list[int],
) -> tuple[Single, list[Round], dict[str, float]]:
    """A worker with `worker_env` (ENGINE, WORKER_CONCURRENCY, ... or none of
    them: the defaults) behind the gateway: single streams, then rounds of
    concurrent clients; the worker's memory after the last round."""
    label = "-".join(v for k, v in sorted(worker_env.items()) if not k.startswith("MODEL_"))
    with (
        stack.worker(server, workdir, label or "default", MODEL_NAME=MODEL, **worker_env) as w,
        stack.gateway(server, workdir) as gw,
    ):
        single, rounds = _over_http(gw.url, MODEL, name, name, tokens, repeats, levels)
        stat = load.ProcStat(w.pid)
        memory = {"rss_mib": stat.rss_mib(), "peak_rss_mib": stat.peak_rss_mib()}
    return single, rounds, memory


# About 1,000 tokens of shared context (a system prompt, a retrieved
# document), then questions that differ.
SHARED_CONTEXT = "The harbour town kept its records in a ledger of tides, ships and weather. " * 62
QUESTIONS = [
    "Who kept the ledger?",
    "What did the ledger record?",
    "Name a ship.",
    "Explain gravity in one sentence.",
]


def prefix_ttft(
    server: stack.RedisServer,
    workdir: Path,
    worker_env: dict[str, str],
    repeats: int,
) -> dict[str, float | None]:
    """TTFT of requests that share SHARED_CONTEXT with an earlier one, through
    the path with the default worker, with the prefix cache and without."""
    out: dict[str, float | None] = {}
    for cache in ("true", "false"):
        env = {**worker_env, "PREFIX_CACHE": cache}
        with (
            stack.worker(server, workdir, f"prefix-{cache}", MODEL_NAME=MODEL, **env),
            stack.gateway(server, workdir) as gw,
        ):

            async def run(url: str = gw.url) -> list[load.Stream]:
                async with load.session() as s:
                    # The first request computes the context (and, with the
                    # cache, leaves it in its slot).
                    await load.stream_chat(s, url, MODEL, "Hello.", 4, system=SHARED_CONTEXT)
                    return [
                        await load.stream_chat(
                            s, url, MODEL, QUESTIONS[i % len(QUESTIONS)], 4, system=SHARED_CONTEXT
                        )
                        for i in range(repeats)
                    ]

            streams = asyncio.run(run())
        ttfts = [st.ttft for st in streams if st.ttft is not None and st.ok]
        out[cache] = 1000 * v if (v := load.median(ttfts)) is not None else None
    from llama_cpp import Llama

    llm = Llama(model_path=worker_env["MODEL_PATH"], n_ctx=64, vocab_only=True, verbose=False)
    out["context_tokens"] = float(len(llm.tokenize(SHARED_CONTEXT.encode(), add_bos=False)))
    llm.close()
    return out


def step_bound(
    model_path: str, threads: int, n_ctx: int, invariant: bool, smoke: bool = False
) -> dict[str, float]:
    """How long a joining long prompt holds up the others' next token: 7
    streams generate while a 2,000-token prompt joins; the gaps between
    their tokens before and while it is prefilled."""
    from streamworker.engines.batched import BatchedEngine
    from streamworker.settings import EngineSettings

    engine = BatchedEngine(
        EngineSettings(
            model_path=model_path,
            model_n_threads=threads,
            model_n_ctx=n_ctx,
            slots=8,
            batch_invariant=invariant,
            prefix_cache=False,
        )
    )
    long_prompt = SHARED_CONTEXT[:400] if smoke else SHARED_CONTEXT * 2
    streams, settle = (2, 0.5) if smoke else (7, 3.0)
    gaps: list[tuple[float, float]] = []  # (time, gap) of generating streams
    window: dict[str, float] = {}

    async def stream(prompt: str, max_tokens: int, record: bool) -> None:
        request = JobRequest(
            messages=[Message("user", prompt)],
            params=GenerationParams(max_tokens=max_tokens, temperature=0.0),
        )
        last = None
        async for item in engine.generate(request, [], threading.Event()):
            now = time.perf_counter()
            if record and isinstance(item, Piece) and item.token >= 0:
                if last is not None:
                    gaps.append((now, now - last))
                last = now

    async def main() -> None:
        runners = [asyncio.create_task(stream(PROMPTS[i], 400, True)) for i in range(streams)]
        await asyncio.sleep(settle)
        window["start"] = time.perf_counter()
        await stream(long_prompt, 1, False)
        window["end"] = time.perf_counter()
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        engine.close()
    before = [g for t, g in gaps if t < window["start"] and t > window["start"] - 2.0]
    during = [g for t, g in gaps if window["start"] <= t <= window["end"]]
    return {
        "invariant": float(invariant),
        "gap_before_ms": 1000 * (load.median(before) or 0.0),
        "gap_max_during_ms": 1000 * max(during, default=0.0),
        "prompt_ms": 1000 * (window["end"] - window["start"]),
    }


def isolated(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run an in-process measurement in a fresh process: one llama.cpp
    context left behind in this process (its threads, its memory) slowed the
    next one measured here by up to 40%."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


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
        return _over_http(
            url, "peer", "llama_cpp.server (the peer)", "llama_cpp.server", tokens, repeats, levels
        )
