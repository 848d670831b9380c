"""The echo engine: a deterministic TEST DOUBLE, never a default.

It "generates" the words of the last user message, cycling, one word per
token, so pipeline tests and benchmarks can run without a model and can
predict every token. Token i depends only on the prompt and i, so a job
resumed after a crash continues exactly. A user message containing
ECHO_FAIL_MARKER (default `ECHO_FAIL`) makes it raise, every time (a
poison job for the tests).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio

from streamworker.engines.base import (
    Done,
    EngineError,
    Piece,
    TextAssembler,
    ThreadedEngine,
)
from streamworker.protocol.wire import GenerationParams, Message
from streamworker.settings import EngineSettings


class EchoEngine(ThreadedEngine):
    n_ctx = 1 << 20

    def __init__(self, settings: EngineSettings) -> None:
        super().__init__()
        self.model_name = settings.model_name
        self.interval = settings.echo_token_interval_ms / 1000.0
        self.fail_marker = settings.echo_fail_marker
        self.concurrent = settings.echo_concurrent
        if self.concurrent:
            self.slots = settings.slots

    @staticmethod
    def words(messages: Sequence[Message]) -> list[str]:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        return last.split() or ["echo"]

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) + 1 for m in messages)

    def _generate_sync(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        resume: Sequence[Piece],
        cancel: threading.Event,
        pace: bool = True,
    ) -> Iterator[Piece | Done]:
        words = self.words(messages)
        if self.fail_marker and any(self.fail_marker in w for w in words):
            raise EngineError("echo engine asked to fail")
        assembler = TextAssembler(params.stop)
        done = sum(1 for p in resume if p.token >= 0)  # token -1: a flushed tail
        assembler.replay(
            [self._bytes(words, i) for i in range(done)], "".join(p.text for p in resume)
        )
        prompt_tokens = self.count_prompt_tokens(messages)
        next_at = time.monotonic()
        for i in range(done, params.max_tokens):
            if cancel.is_set():
                yield Done("cancelled", prompt_tokens)
                return
            if self.interval and pace:
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            text = assembler.feed(self._bytes(words, i))
            yield Piece(i, text)
            if assembler.stopped:
                yield Done("stop", prompt_tokens)
                return
        tail = assembler.flush()
        if tail:
            yield Piece(-1, tail)
        yield Done("length", prompt_tokens)

    @staticmethod
    def _bytes(words: list[str], i: int) -> bytes:
        return (words[i % len(words)] + " ").encode()

    async def generate(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        resume: Sequence[Piece],
        cancel: threading.Event,
    ) -> AsyncIterator[Piece | Done]:
        if not self.concurrent:
            async with contextlib.aclosing(
                super().generate(messages, params, resume, cancel)
            ) as items:
                async for item in items:
                    yield item
            return
        # ECHO_CONCURRENT: the same items, paced with an async sleep instead
        # of a thread, so every admitted job runs at once (a thread each would
        # not scale to the relay benchmark's 1000 streams). Producing a word
        # is not blocking work, so it may run on the loop.
        next_at = time.monotonic()
        for item in self._generate_sync(messages, params, resume, cancel, pace=False):
            if self.interval and isinstance(item, Piece) and item.token >= 0:
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                if cancel.is_set():
                    yield Done("cancelled", self.count_prompt_tokens(messages))
                    return
            yield item

    def close(self) -> None:
        pass
