"""Figure 6: what a JSON-schema grammar costs in decode speed, in process
(no gateway, no Redis: the engine's own rate), one stream on the llama and
the batched engine, and 4 streams at once on the batched engine.

The same prompt runs with and without the grammar, greedy, so the only
difference is the sampler's work: checking each picked token against the
grammar, and filtering the whole vocabulary through it when the pick is not
allowed. Rates are tokens over the time from the first to the last token
(the decode rate; the prefill is the same either way)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

from ops.bench import load
from streamworker.engines.base import Engine, Piece
from streamworker.protocol.wire import GenerationParams, JobRequest, Message

# Long enough that a grammar-constrained answer runs for dozens of tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 24},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
PROMPT = [Message("user", "Describe a person as JSON.")]


@dataclass
class GrammarRow:
    engine: str
    streams: int
    plain_tok_s: float | None
    grammar_tok_s: float | None
    grammar_tokens: int  # median tokens of a constrained answer

    @property
    def cost(self) -> float | None:
        if not self.plain_tok_s or not self.grammar_tok_s:
            return None
        return 1 - self.grammar_tok_s / self.plain_tok_s


async def _one(engine: Engine, params: GenerationParams) -> load.Stream:
    out = load.Stream()
    request = JobRequest(messages=PROMPT, params=params)
    async for item in engine.generate(request, [], threading.Event()):
        if isinstance(item, Piece) and item.token >= 0:
            now = time.perf_counter()
            out.tokens += 1
            out.first = out.first or now
            out.last = now
    out.ok = True
    return out


def _rate(engine: Engine, params: GenerationParams, streams: int, repeats: int) -> tuple:
    """Aggregate decode rate of `streams` at once (median over the repeats),
    and the median tokens per stream."""
    rates, sizes = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        runs = asyncio.run(_gather(engine, params, streams))
        first = min(s.first for s in runs if s.first)
        last = max(s.last for s in runs if s.last)
        tokens = sum(s.tokens for s in runs)
        rates.append((tokens - streams) / (last - first) if last > first else None)
        sizes.append(tokens / streams)
    rates = [r for r in rates[1:] if r]
    return load.median(rates), int(load.median(sizes[1:]) or 0)


async def _gather(engine: Engine, params: GenerationParams, streams: int) -> list[load.Stream]:
    return list(await asyncio.gather(*(_one(engine, params) for _ in range(streams))))


def grammar_cost(
    model_path: str,
    threads: int,
    n_ctx: int,
    tokens: int,
    repeats: int,
    *,
    streams: int = 4,
    json_tokens: int = 128,
) -> list[GrammarRow]:
    """`tokens` per unconstrained answer; a constrained one runs until its
    object is complete or `json_tokens` (a smoke run cuts it short)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from streamworker.engines.batched import BatchedEngine
    from streamworker.engines.llama import LlamaEngine
    from streamworker.settings import EngineSettings

    grammar = json_schema_to_gbnf(json.dumps(SCHEMA))
    plain = GenerationParams(max_tokens=tokens, temperature=0)
    constrained = GenerationParams(max_tokens=json_tokens, temperature=0, grammar=grammar)
    settings = EngineSettings(
        model_path=model_path, model_n_threads=threads, model_n_ctx=n_ctx, slots=streams
    )
    rows = []
    llama = LlamaEngine(settings)
    try:
        p, _ = _rate(llama, plain, 1, repeats)
        g, size = _rate(llama, constrained, 1, repeats)
        rows.append(GrammarRow("llama engine", 1, p, g, size))
    finally:
        llama.close()
    batched = BatchedEngine(settings)
    try:
        for n in (1, streams):
            p, _ = _rate(batched, plain, n, repeats)
            g, size = _rate(batched, constrained, n, repeats)
            rows.append(GrammarRow("batched engine", n, p, g, size))
    finally:
        batched.close()
    return rows


def section(rows: list[GrammarRow], when: str = "") -> list[str]:
    """The report's section for this figure."""
    if not rows:
        return []
    lines = [
        "## 6. The cost of a JSON-schema grammar (bundled model, in process)",
        "",
        "Greedy decoding of the same prompt without and with a grammar compiled from a "
        "JSON schema (`response_format: json_schema`), in the engine itself: decode tok/s "
        "summed over the streams (first to last token). The grammar is checked against "
        "each picked token and filters the whole vocabulary only when the pick is not "
        "allowed, as llama.cpp's own sampler does.",
        "",
    ]
    if when:
        lines += [when, ""]
    lines += [
        "| engine | streams | tok/s, no grammar | tok/s, JSON schema | cost | "
        "tokens per constrained answer |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cost = f"{100 * r.cost:.0f}%" if r.cost is not None else "n/a"
        plain = f"{r.plain_tok_s:.1f}" if r.plain_tok_s else "n/a"
        constrained = f"{r.grammar_tok_s:.1f}" if r.grammar_tok_s else "n/a"
        lines.append(
            f"| {r.engine} | {r.streams} | {plain} | {constrained} | {cost} | {r.grammar_tokens} |"
        )
    return [*lines, ""]
