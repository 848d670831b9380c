"""What a client reads: response bodies and Server-Sent Event frames, for
chat completions and legacy text completions.

Pure: bytes out, no I/O. Each API format is one renderer with the same
steps (a whole body; the frames before, between and after the tokens); an
endpoint picks its renderer, and the code that streams a job never asks
which format it speaks. Choices are numbered by the caller; logprobs come
from the log entries each piece of text was made of (gateway/logprobs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import msgspec

from gateway import logprobs
from gateway.response_types import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCallOut,
    FunctionDelta,
    TextChoice,
    TextCompletion,
    TextCompletionChunk,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)

if TYPE_CHECKING:
    from gateway.choices import Collected
    from gateway.errors import ApiError
    from gateway.tools import Call
    from streamworker.protocol.wire import LogEntry

KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
# Request key: frames a middleware adds at the end of a completed stream,
# just before [DONE] (the sources of a retrieval-augmented answer).
TRAILER = "sse_trailer"
# Proxies (nginx) must pass each frame on at once, and nothing may cache it.
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# A streamed call's arguments go out in pieces of about this many
# characters, as OpenAI streams them (a client must join them).
ARGUMENT_PIECE = 16

_encoder = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def sse(obj: object) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def error_frame(err: ApiError) -> bytes:
    """An error after the 200 went out: the same body a non-streamed request gets."""
    return sse(err.body())


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


@dataclass(frozen=True, slots=True)
class Finished:
    """A whole choice of an answer that did not stream."""

    collected: Collected
    finish_reason: str | None


class Renderer(Protocol):
    """One API format's output for one answer (`id`, `model`, `created` fixed)."""

    def body(self, choices: Sequence[Finished], usage: Usage) -> bytes:
        """The whole response of a request that did not stream."""
        ...

    def opening(self, n: int) -> bytes:
        """Frames sent before the first token (may be none)."""
        ...

    def content(self, index: int, text: str, entries: Sequence[LogEntry]) -> bytes:
        """The frame for a piece of choice `index`'s text."""
        ...

    def calls(self, index: int, calls: Sequence[Call]) -> bytes:
        """The frames of choice `index`'s tool calls, read whole."""
        ...

    def call_start(self, index: int, call: int, call_id: str, name: str) -> bytes:
        """The frame that opens call `call` of choice `index` (id and name)."""
        ...

    def call_args(self, index: int, call: int, text: str) -> bytes:
        """A piece of that call's arguments."""
        ...

    def closing(self, reasons: Sequence[str | None], usage: Usage | None) -> bytes:
        """The frames of a completed answer (one reason per choice), before [DONE]."""
        ...


class RendererFactory(Protocol):
    def __call__(
        self,
        job_id: str,
        model: str,
        created: int,
        *,
        logprobs: bool,
        prompt_chars: int,
        service_tier: str,
    ) -> Renderer: ...


def _call_out(call: Call) -> ToolCallOut:
    return ToolCallOut(call.id, FunctionCallOut(call.name, call.arguments))


@dataclass(frozen=True, slots=True)
class ChatRenderer:
    """/v1/chat/completions: `chat.completion`, streamed as `chat.completion.chunk`s
    whose first delta for each choice names the assistant role."""

    job_id: str
    model: str
    created: int
    logprobs: bool = False
    prompt_chars: int = 0  # unused: chat logprobs carry no offsets
    # The tier the job was queued in, echoed in every object as OpenAI does.
    service_tier: str = "default"

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        return sse(
            ChatCompletionChunk(
                id=self.job_id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.model,
                choices=choices,
                usage=usage,
                service_tier=self.service_tier,
            )
        )

    def body(self, choices: Sequence[Finished], usage: Usage) -> bytes:
        out = []
        for f in choices:
            c = f.collected
            message = AssistantMessage(
                "assistant",
                "".join(c.text) if c.text or not c.calls else None,
                [_call_out(call) for call in c.calls] if c.calls else msgspec.UNSET,
            )
            lp = logprobs.chat(c.entries) if self.logprobs else None
            out.append(Choice(c.index, message, f.finish_reason, lp))
        return encode(
            ChatCompletion(
                id=self.job_id,
                object="chat.completion",
                created=self.created,
                model=self.model,
                choices=out,
                usage=usage,
                service_tier=self.service_tier,
            )
        )

    def opening(self, n: int) -> bytes:
        return b"".join(
            self._chunk([ChunkChoice(i, Delta(role="assistant", content=""))]) for i in range(n)
        )

    def content(self, index: int, text: str, entries: Sequence[LogEntry]) -> bytes:
        lp = logprobs.chat(entries) if self.logprobs else None
        if not text and not (lp and lp.content):
            return b""
        return self._chunk([ChunkChoice(index, Delta(content=text), lp)])

    def calls(self, index: int, calls: Sequence[Call]) -> bytes:
        frames = []
        for i, call in enumerate(calls):
            frames.append(self.call_start(index, i, call.id, call.name))
            args = call.arguments
            for at in range(0, len(args), ARGUMENT_PIECE):
                frames.append(self.call_args(index, i, args[at : at + ARGUMENT_PIECE]))
        return b"".join(frames)

    def call_start(self, index: int, call: int, call_id: str, name: str) -> bytes:
        head = ToolCallDelta(call, call_id, "function", FunctionDelta(name, ""))
        return self._chunk([ChunkChoice(index, Delta(tool_calls=[head]))])

    def call_args(self, index: int, call: int, text: str) -> bytes:
        piece = ToolCallDelta(call, function=FunctionDelta(arguments=text))
        return self._chunk([ChunkChoice(index, Delta(tool_calls=[piece]))])

    def closing(self, reasons: Sequence[str | None], usage: Usage | None) -> bytes:
        frames = b"".join(
            self._chunk([ChunkChoice(i, Delta(), finish_reason=r)]) for i, r in enumerate(reasons)
        )
        if usage is not None:
            frames += self._chunk([], usage)
        return frames


@dataclass(slots=True)
class TextRenderer:
    """/v1/completions (legacy): `text_completion` objects, streamed and not.
    Logprob offsets count characters from the start of the prompt, as
    OpenAI's do, so each choice keeps its own running offset."""

    job_id: str
    model: str
    created: int
    logprobs: bool = False
    prompt_chars: int = 0  # where a choice's text starts (0 with echo)
    # Not in OpenAI's legacy completion objects, so not echoed.
    service_tier: str = "default"
    _offsets: dict[int, int] = field(default_factory=dict)

    def _chunk(self, choices: list[TextChoice], usage: Usage | None = None) -> bytes:
        return sse(
            TextCompletionChunk(
                id=self.job_id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=choices,
                usage=msgspec.UNSET if usage is None else usage,
            )
        )

    def _logprobs(self, index: int, entries: Sequence[LogEntry]) -> logprobs.LegacyLogprobs | None:
        if not self.logprobs:
            return None
        start = self._offsets.get(index, self.prompt_chars)
        lp, self._offsets[index] = logprobs.legacy(entries, start)
        return lp

    def body(self, choices: Sequence[Finished], usage: Usage) -> bytes:
        out = [
            TextChoice(
                f.collected.index,
                "".join(f.collected.text),
                self._logprobs(f.collected.index, f.collected.entries),
                f.finish_reason,
            )
            for f in choices
        ]
        return encode(
            TextCompletion(
                id=self.job_id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=out,
                usage=usage,
            )
        )

    def opening(self, n: int) -> bytes:
        return b""

    def content(self, index: int, text: str, entries: Sequence[LogEntry]) -> bytes:
        lp = self._logprobs(index, entries)
        if not text and not (lp and lp.tokens):
            return b""
        return self._chunk([TextChoice(index, text, lp)])

    def calls(self, index: int, calls: Sequence[Call]) -> bytes:
        return b""  # legacy completions have no tools

    def call_start(self, index: int, call: int, call_id: str, name: str) -> bytes:
        return b""

    def call_args(self, index: int, call: int, text: str) -> bytes:
        return b""

    def closing(self, reasons: Sequence[str | None], usage: Usage | None) -> bytes:
        frames = b"".join(
            self._chunk([TextChoice(i, "", finish_reason=r)]) for i, r in enumerate(reasons)
        )
        if usage is not None:
            frames += self._chunk([], usage)
        return frames
