"""One choice of an answer as its tokens arrive: text that goes out as
content, or text held back while it may be tool calls and read as calls at
the end.

With no tools, every piece passes straight through. With a forced call
(`tool_choice` required or a function) the whole choice is calls in the
generic format, written under a grammar: a stream sends each call as it is
written (`CallScanner`: the id and name once they are complete, then the
arguments piece by piece), a whole answer reads them at the end. With
`auto` the first visible characters decide:
a `{`, `[`, ``` or `<tool_call>` start is held (it may be calls), anything
else streams as content at once. Held text that turns out not to be calls
goes out as content after all: nothing the model wrote is lost.

Pure: unit-tested without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway import tools

if TYPE_CHECKING:
    from gateway.tools import Call, ToolPlan
    from streamworker.protocol.wire import LogEntry


@dataclass(frozen=True, slots=True)
class Content:
    """Text to show, with the log entries it came from (for logprobs)."""

    text: str
    entries: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class Calls:
    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class CallStart:
    """A streamed call begins: its place in the choice, id and name."""

    call: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArgs:
    """A piece of a streamed call's arguments (JSON text)."""

    call: int
    text: str


Out = Content | Calls | CallStart | CallArgs

# The head of one call in the generic format, up to its arguments' value;
# the grammar writes `name` before `arguments` (the schema's order).
_CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


@dataclass(eq=False)
class CallScanner:
    """Forced calls read as they are written: a call's head once its name is
    complete, then its arguments' text up to the brace that closes them
    (counted outside strings)."""

    buf: str = ""
    pos: int = 0
    calls: int = 0
    depth: int | None = None  # inside a call's arguments: their nesting
    in_string: bool = False
    escape: bool = False

    def feed(self, text: str) -> list[Out]:
        self.buf += text
        out: list[Out] = []
        while True:
            if self.depth is None:
                head = _CALL_HEAD.search(self.buf, self.pos)
                if head is None:
                    return out
                name = json.loads(f'"{head.group(1)}"')
                out.append(CallStart(self.calls, tools.new_call_id(), name))
                self.pos, self.depth = head.end(), 0
            start, closed = self.pos, self._scan()
            if self.pos > start:
                out.append(CallArgs(self.calls, self.buf[start : self.pos]))
            if not closed:
                return out
            self.calls += 1
            self.depth = None

    def _scan(self) -> bool:
        """Advance through the arguments; True once they are closed."""
        assert self.depth is not None
        while self.pos < len(self.buf):
            ch = self.buf[self.pos]
            self.pos += 1
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return True
        return False


@dataclass(eq=False)
class ChoiceState:
    tools: ToolPlan | None = None
    # A stream: forced calls go out as they are written.
    streaming: bool = False
    # None: passing through; True: holding (may be calls); False: plain
    # content decided after holding whitespace.
    holding: bool | None = None
    _held: list[LogEntry] = field(default_factory=list)
    _scanner: CallScanner | None = None
    made_calls: bool = False

    def __post_init__(self) -> None:
        if self.tools is not None:
            self.holding = True
            if self.streaming and self.tools.constrained:
                self._scanner = CallScanner()

    def feed(self, entries: Sequence[LogEntry]) -> list[Out]:
        if not entries:
            return []
        if not self.holding:
            return [_content(entries)]
        self._held.extend(entries)
        if self._scanner is not None:
            outs = self._scanner.feed("".join(e.text for e in entries))
            self.made_calls = self.made_calls or bool(outs)
            return outs
        if self.tools is not None and not self.tools.constrained:
            decided = tools.may_be_calls("".join(e.text for e in self._held))
            if decided is False:
                return self._release()
        return []

    def finish(self) -> list[Out]:
        """The choice ended: what was held, as calls or as content."""
        if not self.holding or self.tools is None:
            return []
        if self._scanner is not None and self.made_calls:
            return []  # the calls went out as they were written
        text = "".join(e.text for e in self._held)
        calls = tools.parse_calls(text, self.tools)
        if calls:
            self.holding = False
            self.made_calls = True
            return [Calls(tuple(calls))]
        return self._release()

    def finish_reason(self, reason: str | None) -> str | None:
        # Calls cut short by max_tokens say so, as OpenAI's do.
        return "tool_calls" if self.made_calls and reason != "length" else reason

    def _release(self) -> list[Out]:
        self.holding = False
        held, self._held = self._held, []
        return [_content(held)] if held else []


def _content(entries: Sequence[LogEntry]) -> Content:
    return Content("".join(e.text for e in entries), tuple(entries))


@dataclass(eq=False)
class Collected:
    """A whole choice, for an answer that does not stream."""

    index: int
    text: list[str] = field(default_factory=list)
    entries: list[LogEntry] = field(default_factory=list)
    calls: tuple[Call, ...] = ()

    def add(self, outs: Sequence[Out]) -> None:
        for out in outs:
            if isinstance(out, Calls):
                self.calls += out.calls
            elif isinstance(out, Content):
                self.text.append(out.text)
                self.entries.extend(out.entries)
