"""The engine protocol every worker talks to, and the pieces engines share.

An engine turns (a job request, the entries earlier attempts logged) into a
stream of log entries (`Piece`) and one final `Done`. Generation is blocking
C code, so it never runs on the event loop: single-sequence engines run a
plain generator in a thread (`ThreadedEngine`), the batched engine runs one
decode loop thread for all of its sequences.
"""

from __future__ import annotations

import asyncio
import codecs
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Protocol

import anyio
import msgspec

from streamworker.protocol.outcomes import EndCode
from streamworker.protocol.wire import JobRequest, LogEntry, Message


class EngineError(Exception):
    """The engine could not run this request (bad prompt, engine fault)."""

    # A permanent error fails the job at once: running it again cannot help.
    permanent = False
    # How the job ends when this error fails it (the gateway maps the code).
    code: EndCode = EndCode.JOB_FAILED


class PromptExceedsContext(EngineError):
    """Prompt plus max_tokens does not fit the model's context."""

    permanent = True
    code = EndCode.CONTEXT_LENGTH_EXCEEDED


# The most choices an engine that runs them one after another takes in one
# job: beyond it, one job would hold the engine for too long.
MAX_CHOICES = 16


class TooManyChoices(EngineError):
    """The job asks for more choices than this engine can hold at once."""

    permanent = True


# What an engine yields is exactly what the log holds: one generated token
# and the text it releases (may be empty: a partial UTF-8 character, or text
# held back because it may start a stop string), with its choice, its
# logprobs, and on a choice's last entry how that choice ended.
Piece = LogEntry


class Done(msgspec.Struct, frozen=True):
    finish_reason: str  # "stop" | "length" | "cancelled" (choice 0's)
    prompt_tokens: int
    # Every choice's finish reason, by index ("" for one cancelled).
    finish_reasons: tuple[str, ...] = ()


class Engine(Protocol):
    model_name: str
    slots: int  # sequences this engine can decode at once

    def generate(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event
    ) -> AsyncIterator[Piece | Done]:
        """Yield the entries after `resume` (already logged), then one Done."""
        ...

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int: ...

    @property
    def n_ctx(self) -> int: ...

    def close(self) -> None: ...


class TextAssembler:
    """Token bytes -> releasable text: joins split UTF-8 characters and holds
    back any tail that could be the start of a stop string, so a stop string
    that spans tokens is never half-sent."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text now safe to send."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        # The earliest stop in the text, not the first one in the list: text
        # cut at a later stop could still hold an earlier one.
        found = [at for at in (text.find(stop) for stop in self._stops) if at >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        keep = self._holdback(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of generation: whatever was held back is real text."""
        if self.stopped:
            return ""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return text

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def replay(self, token_bytes: Sequence[bytes], sent_text: str) -> None:
        """Rebuild the state after a resume: feed the logged tokens' bytes and
        check they release exactly the text that was delivered."""
        released = "".join(self.feed(b) for b in token_bytes)
        if released != sent_text:
            # The logged text is what the client has; trust it over re-decoding.
            self._held = ""


class ThreadedEngine:
    """Base for engines that decode one sequence at a time in a thread.

    Subclasses implement `_generate_sync`, a plain generator. Requests beyond
    one wait on a lock, so slots=1 however many jobs the worker admits.
    """

    model_name: str = ""
    slots: int = 1

    def __init__(self) -> None:
        # A semaphore, not a lock: an abandoned generator may be closed from
        # another task, and a lock would refuse that release.
        self._lock = anyio.Semaphore(1)

    def _generate_sync(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event
    ) -> Iterator[Piece | Done]:
        raise NotImplementedError  # pragma: no cover - abstract

    async def generate(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event
    ) -> AsyncIterator[Piece | Done]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Piece | Done | BaseException] = asyncio.Queue()

        def produce() -> None:
            # call_soon_threadsafe does not wait for the loop, so the decode
            # thread never stalls on Python-side consumers.
            try:
                for item in self._generate_sync(request, resume, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:  # handed to the async side, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        async with self._lock:
            thread = loop.run_in_executor(None, produce)
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, Done):
                        break
            finally:
                # Consumer went away (cancelled, stale lease): stop the thread at
                # its next token rather than decoding to max_tokens, and wait for
                # it so the engine is free before the lock is released.
                cancel.set()
                with anyio.CancelScope(shield=True):
                    await thread
