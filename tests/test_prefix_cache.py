"""Prefix reuse in the batched engine: a prompt that starts like one the
worker ran before takes that prefix's KV instead of recomputing it, and the
answer at temperature 0 is the same as without the cache, in both batching
modes. The bookkeeping (which tokens a slot may lend) is unit-tested first."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from streamworker.engines.base import Done
from streamworker.engines.prefix_cache import SlotCache, common_prefix
from streamworker.protocol.wire import GenerationParams, JobRequest, Message
from streamworker.settings import EngineSettings
from tests.conftest import client_for
from tests.harness import free_port

# ~600 tokens of shared context: four whole 128-token prefill chunks and a
# part of a fifth.
CONTEXT = "The harbour town kept its records in a ledger of tides, ships and weather. " * 36
# The first is the prompt whose top logits tie within 0.01 (see
# test_engine_batched): any change of rounding shows there.
QUESTIONS = ["Explain gravity in one sentence.", "Who kept the ledger?", "Name a ship."]


@pytest.mark.unit
def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


@pytest.mark.unit
def test_invariant_cache_lends_whole_chunks_of_a_prompt_only() -> None:
    cache = SlotCache(slots=2, chunk=4, invariant=True)
    cache.tokens[1] = list(range(10))
    prompt = [*range(9), 99]
    assert cache.usable(1, prompt) == 8  # 9 shared -> two whole chunks
    assert cache.usable(0, prompt) == 0
    assert cache.best([0, 1], prompt) == (1, 8)
    # Never the whole prompt: its last token's logits start the answer.
    assert cache.usable(1, list(range(8))) == 4
    # What a leaving sequence leaves: whole chunks of its prefilled prompt,
    # none of its generated tokens.
    assert cache.kept(prompt_len=10, prefilled=10, decoded=30) == 8
    assert cache.kept(prompt_len=10, prefilled=6, decoded=6) == 4


@pytest.mark.unit
def test_mixed_cache_lends_every_decoded_token() -> None:
    cache = SlotCache(slots=1, chunk=4, invariant=False)
    cache.tokens[0] = list(range(10))
    assert cache.usable(0, [*range(9), 99]) == 9
    assert cache.usable(0, list(range(12))) == 10
    assert cache.kept(prompt_len=10, prefilled=10, decoded=30) == 30
    assert cache.best([0], [5, 6]) == (-1, 0)


def messages(question: str) -> list[Message]:
    return [Message("system", CONTEXT), Message("user", question)]


async def tokens(engine, msgs: list[Message], max_tokens: int = 24) -> list[int]:  # type: ignore[no-untyped-def]
    request = JobRequest(
        messages=msgs, params=GenerationParams(max_tokens=max_tokens, temperature=0.0)
    )
    out = []
    async for item in engine.generate(request, [], threading.Event()):
        if not isinstance(item, Done) and item.token >= 0:
            out.append(item.token)
    return out


@pytest.fixture(scope="module", params=[True, False], ids=["invariant", "mixed"])
def invariant(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture(scope="module")
def uncached(invariant: bool) -> Iterator[dict[str, list[int]]]:
    """The answers of an engine without the cache: the reference."""
    from streamworker.engines.batched import BatchedEngine

    engine = BatchedEngine(
        EngineSettings(slots=4, model_n_threads=2, batch_invariant=invariant, prefix_cache=False)
    )
    try:

        async def main() -> dict[str, list[int]]:
            return {q: await tokens(engine, messages(q)) for q in QUESTIONS}

        answers = asyncio.run(main())
        assert engine.reused == 0
        yield answers
    finally:
        engine.close()


def cached_engine(invariant: bool):  # type: ignore[no-untyped-def]
    from streamworker.engines.batched import BatchedEngine

    return BatchedEngine(
        EngineSettings(slots=4, model_n_threads=2, batch_invariant=invariant, prefix_cache=True)
    )


def test_reused_prefix_gives_the_same_answers(
    invariant: bool, uncached: dict[str, list[int]]
) -> None:
    engine = cached_engine(invariant)
    try:
        prompt_len = len(engine.prompts.tokens(messages(QUESTIONS[0]))[0])

        async def main() -> dict[str, list[int]]:
            await tokens(engine, messages("What did the ledger record?"), 8)  # warms slot 0
            return {q: await tokens(engine, messages(q)) for q in QUESTIONS}

        answers = asyncio.run(main())
        assert answers == uncached
        # Each question took the shared context from the cache: at least its
        # two whole chunks (invariant), nearly all of it (mixed).
        least = 512 if invariant else prompt_len - 30
        assert engine.reused >= len(QUESTIONS) * least
    finally:
        engine.close()


def test_prefix_copied_from_another_slot(invariant: bool, uncached: dict[str, list[int]]) -> None:
    """The prefix sits in slot 1 while slot 0 is the lowest free one: the new
    sequence runs in slot 0 on a copy of slot 1's KV."""
    engine = cached_engine(invariant)
    try:

        async def main() -> list[int]:
            started = asyncio.Event()

            async def busy() -> None:  # holds slot 0 while the context runs
                request = JobRequest(
                    messages=[Message("user", "Count from 1 to 10.")],
                    params=GenerationParams(max_tokens=64, temperature=0.0),
                )
                async for _ in engine.generate(request, [], threading.Event()):
                    started.set()

            task = asyncio.create_task(busy())
            await started.wait()
            await tokens(engine, messages("What did the ledger record?"), 4)  # slot 1
            await task
            assert engine.decoder.cache is not None and engine.decoder.cache.tokens[1]
            return await tokens(engine, messages(QUESTIONS[0]))

        before = engine.reused
        assert asyncio.run(main()) == uncached[QUESTIONS[0]]
        assert engine.reused - before >= 512
    finally:
        engine.close()


def test_next_turn_reuses_the_previous_answer() -> None:
    """Mixed mode keeps generated tokens too: the next turn of a chat, which
    repeats the answer, starts after it."""
    from streamworker.engines.batched import BatchedEngine

    engine = BatchedEngine(
        EngineSettings(slots=2, model_n_threads=2, batch_invariant=False, prefix_cache=True)
    )
    try:
        first = [Message("user", "Name a famous painter.")]

        async def main() -> tuple[str, int]:
            request = JobRequest(
                messages=first, params=GenerationParams(max_tokens=12, temperature=0.0)
            )
            text = ""
            async for item in engine.generate(request, [], threading.Event()):
                if not isinstance(item, Done):
                    text += item.text
            before = engine.reused
            turn = [*first, Message("assistant", text), Message("user", "Why?")]
            await tokens(engine, turn, 4)
            return text, engine.reused - before

        text, reused = asyncio.run(main())
        first_len = len(engine.prompts.tokens(first)[0])
        assert text
        assert reused > first_len  # the prompt and (part of) the answer
    finally:
        engine.close()


def test_prefix_cache_through_the_path(start_gateway, start_worker) -> None:  # type: ignore[no-untyped-def]
    """The default worker behind the gateway: a request repeating an earlier
    one's context gets the same answer from the cached prefix, and the
    worker's metrics count the tokens the cache supplied."""
    port = free_port()
    start_worker(name="prefix", MODEL_N_THREADS="2", WORKER_METRICS_PORT=str(port))
    client = client_for(start_gateway(), timeout=120)

    def ask(question: str) -> str:
        out = client.chat.completions.create(
            model="gemma-3-270m",
            messages=[
                {"role": "system", "content": CONTEXT},
                {"role": "user", "content": question},
            ],
            max_tokens=16,
            temperature=0,
        )
        return out.choices[0].message.content or ""

    first = ask(QUESTIONS[0])  # computes the context: nothing cached yet

    def counter(name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
        return float(line.split()[1])

    assert counter("streamworker_prefix_cache_hits_total") == 0
    assert ask(QUESTIONS[0]) == first  # the same prompt, its context from the cache
    assert counter("streamworker_prefix_cache_hits_total") >= 512
    assert counter("streamworker_prefix_cache_queries_total") >= 2 * 512
