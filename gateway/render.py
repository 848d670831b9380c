"""What a client reads: response bodies and Server-Sent Event frames, for
chat completions and legacy text completions.

Pure: bytes out, no I/O. Each API format is one renderer with the same four
steps (a whole body; the frames before, between and after the tokens); an
endpoint picks its renderer, and the code that streams a job never asks
which format it speaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import msgspec

from gateway.openai_types import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    TextChoice,
    TextCompletion,
    TextCompletionChunk,
    Usage,
)

if TYPE_CHECKING:
    from gateway.errors import ApiError
    from streamworker.protocol.wire import End

KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
# Proxies (nginx) must pass each frame on at once, and nothing may cache it.
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_encoder = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def sse(obj: object) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def error_frame(err: ApiError) -> bytes:
    """An error after the 200 went out: the same body a non-streamed request gets."""
    return sse(err.body())


def usage_of(end: End) -> Usage:
    return Usage(
        end.prompt_tokens, end.completion_tokens, end.prompt_tokens + end.completion_tokens
    )


class Renderer(Protocol):
    """One API format's output for one job (`id`, `model`, `created` fixed)."""

    def body(self, text: str, end: End) -> bytes:
        """The whole response of a request that did not stream."""
        ...

    def opening(self) -> bytes:
        """Frames sent before the first token (may be none)."""
        ...

    def delta(self, text: str) -> bytes:
        """The frame for a piece of generated text."""
        ...

    def closing(self, end: End, include_usage: bool) -> bytes:
        """The frames of a completed job, before [DONE]."""
        ...


class RendererFactory(Protocol):
    def __call__(self, job_id: str, model: str, created: int) -> Renderer: ...


@dataclass(frozen=True, slots=True)
class ChatRenderer:
    """/v1/chat/completions: `chat.completion`, streamed as `chat.completion.chunk`s
    whose first delta names the assistant role."""

    job_id: str
    model: str
    created: int

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        return sse(
            ChatCompletionChunk(
                id=self.job_id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.model,
                choices=choices,
                usage=usage,
            )
        )

    def body(self, text: str, end: End) -> bytes:
        return encode(
            ChatCompletion(
                id=self.job_id,
                object="chat.completion",
                created=self.created,
                model=self.model,
                choices=[Choice(0, AssistantMessage("assistant", text), end.finish_reason)],
                usage=usage_of(end),
            )
        )

    def opening(self) -> bytes:
        return self._chunk([ChunkChoice(0, Delta(role="assistant", content=""))])

    def delta(self, text: str) -> bytes:
        return self._chunk([ChunkChoice(0, Delta(content=text))])

    def closing(self, end: End, include_usage: bool) -> bytes:
        frames = self._chunk([ChunkChoice(0, Delta(), finish_reason=end.finish_reason)])
        if include_usage:
            frames += self._chunk([], usage_of(end))
        return frames


@dataclass(frozen=True, slots=True)
class TextRenderer:
    """/v1/completions (legacy): `text_completion` objects, streamed and not."""

    job_id: str
    model: str
    created: int

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

    def body(self, text: str, end: End) -> bytes:
        return encode(
            TextCompletion(
                id=self.job_id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=[TextChoice(0, text, finish_reason=end.finish_reason)],
                usage=usage_of(end),
            )
        )

    def opening(self) -> bytes:
        return b""

    def delta(self, text: str) -> bytes:
        return self._chunk([TextChoice(0, text)])

    def closing(self, end: End, include_usage: bool) -> bytes:
        frames = self._chunk([TextChoice(0, "", finish_reason=end.finish_reason)])
        if include_usage:
            frames += self._chunk([], usage_of(end))
        return frames
