"""The echo engine: a deterministic TEST DOUBLE, never a default.

It "generates" the words of the last user message (or of a raw completion
prompt), cycling, one word per token, so pipeline tests and benchmarks can
run without a model and can predict every token. Token i of choice c is word
i + c, so a job resumed after a crash continues exactly, and n choices
differ. `echo`, `stop`, `max_tokens` and `logprobs` (made-up, fixed numbers)
are honoured as the real engines honour them. A user message containing
ECHO_FAIL_MARKER (default `ECHO_FAIL`) makes it raise, every time (a
poison job for the tests). One containing ECHO_HANG_MARKER (off unless
set) blocks forever instead: a hung engine, for the watchdog tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio

from streamworker.engines.base import (
    MAX_CHOICES,
    Done,
    EngineError,
    Piece,
    TextAssembler,
    ThreadedEngine,
    TooManyChoices,
)
from streamworker.protocol.wire import (
    GenerationParams,
    JobKind,
    JobRequest,
    Message,
    TokenLogprob,
    TopLogprob,
)
from streamworker.settings import EngineSettings


class EchoEngine(ThreadedEngine):
    n_ctx = 1 << 20

    def __init__(self, settings: EngineSettings) -> None:
        super().__init__()
        self.model_name = settings.model_name
        self.interval = settings.echo_token_interval_ms / 1000.0
        self.fail_marker = settings.echo_fail_marker
        self.hang_marker = settings.echo_hang_marker
        self.concurrent = settings.echo_concurrent
        if self.concurrent:
            self.slots = settings.slots

    @staticmethod
    def words(request: JobRequest) -> list[str]:
        """The words it echoes: the raw prompt's, or the last user message's."""
        if request.kind is JobKind.COMPLETION:
            prompt = request.prompt
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            return text.split() or ["echo"]
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        return last.split() or ["echo"]

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) + 1 for m in messages)

    def _prompt_tokens(self, request: JobRequest) -> int:
        if request.kind is JobKind.COMPLETION:
            return len(self.words(request))
        return self.count_prompt_tokens(request.messages)

    def _generate_sync(
        self,
        request: JobRequest,
        resume: Sequence[Piece],
        cancel: threading.Event,
        pace: bool = True,
    ) -> Iterator[Piece | Done]:
        """Choice c says word (i + c) at its token i; choices run in order."""
        words = self.words(request)
        if self.fail_marker and any(self.fail_marker in w for w in words):
            raise EngineError("echo engine asked to fail")
        if self.hang_marker and any(self.hang_marker in w for w in words):
            # Never set: the generating thread (or loop) is stuck for good,
            # as a decode blocked inside llama.cpp would be.
            threading.Event().wait()
        params = request.params
        if params.n > MAX_CHOICES:
            raise TooManyChoices(f"n={params.n} exceeds {MAX_CHOICES}")
        prompt_tokens = self._prompt_tokens(request)
        reasons: list[str] = []
        next_at = time.monotonic()
        for c in range(max(1, params.n)):
            logged = [e for e in resume if e.choice == c]
            finished = next((e.finish for e in logged if e.finish), "")
            if finished:
                reasons.append(finished)
                continue
            if params.echo:
                for i in range(sum(1 for e in logged if e.echo), len(words)):
                    lp = self._logprob(words, i, params) if i else None
                    yield Piece(i, words[i] + " ", c, lp if params.logprobs else None, echo=True)
            generated = [e for e in logged if not e.echo]
            done = sum(1 for p in generated if p.token >= 0)  # token -1: a flushed tail
            assembler = TextAssembler(params.stop)
            assembler.replay(
                [self._bytes(words, i + c) for i in range(done)],
                "".join(p.text for p in generated),
            )
            reason = "length"
            for i in range(done, params.max_tokens):
                if cancel.is_set():
                    yield Done("cancelled", prompt_tokens, (*reasons, ""))
                    return
                if self.interval and pace:
                    next_at += self.interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                text = assembler.feed(self._bytes(words, i + c))
                lp = self._logprob(words, i + c, params) if params.logprobs else None
                yield Piece(i, text, c, lp)
                if assembler.stopped:
                    reason = "stop"
                    break
            yield Piece(-1, assembler.flush(), c, finish=reason)
            reasons.append(reason)
        yield Done(reasons[0], prompt_tokens, tuple(reasons))

    @staticmethod
    def _bytes(words: list[str], i: int) -> bytes:
        return (words[i % len(words)] + " ").encode()

    @staticmethod
    def _logprob(words: list[str], i: int, params: GenerationParams) -> TokenLogprob:
        """Made-up but fixed numbers: the word said at -0.5, the words after
        it as the runners-up."""
        n = len(words)
        top = [
            TopLogprob(k % n, EchoEngine._bytes(words, k), -0.5 * (1 + k - i))
            for k in range(i, i + min(params.top_logprobs, n))
        ]
        return TokenLogprob(EchoEngine._bytes(words, i), -0.5, top)

    async def generate(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event
    ) -> AsyncIterator[Piece | Done]:
        if not self.concurrent:
            async with contextlib.aclosing(super().generate(request, resume, cancel)) as items:
                async for item in items:
                    yield item
            return
        # ECHO_CONCURRENT: the same items, paced with an async sleep instead
        # of a thread, so every admitted job runs at once (a thread each would
        # not scale to the relay benchmark's 1000 streams). Producing a word
        # is not blocking work, so it may run on the loop.
        next_at = time.monotonic()
        for item in self._generate_sync(request, resume, cancel, pace=False):
            if self.interval and isinstance(item, Piece) and item.token >= 0 and not item.echo:
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                if cancel.is_set():
                    yield Done("cancelled", self._prompt_tokens(request))
                    return
            yield item

    def close(self) -> None:
        pass
