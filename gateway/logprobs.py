"""Logged token logprobs -> OpenAI's two logprob shapes.

Chat: `logprobs.content[]`, one object per token with its text, logprob,
bytes and `top_logprobs`. Legacy completions: parallel lists `tokens`,
`token_logprobs`, `top_logprobs` (a dict per position) and `text_offset`.
The worker logs each token's logprob with the token itself, so a resumed
stream shows exactly the numbers a client would have seen.

Entries without a token (-1: a text tail released at the end) have no
logprob and are left out; an echoed prompt's first token has a null
logprob (nothing precedes it), as OpenAI reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.response_types import ChatLogprobs, LegacyLogprobs, TokenLogprobOut, TopLogprobOut

if TYPE_CHECKING:
    from streamworker.protocol.wire import LogEntry

__all__ = ["LegacyLogprobs", "chat", "legacy"]


def _text(piece: bytes) -> str:
    # A token may be part of a UTF-8 character; its `bytes` stay exact.
    return piece.decode("utf-8", errors="replace")


def _scored(entries: Sequence[LogEntry]) -> list[LogEntry]:
    return [e for e in entries if e.token >= 0 and (e.logprob is not None or e.echo)]


def chat(entries: Sequence[LogEntry]) -> ChatLogprobs:
    content = []
    for e in _scored(entries):
        lp = e.logprob
        if lp is None:
            continue
        top = [TopLogprobOut(_text(t.piece), t.logprob, list(t.piece)) for t in lp.top]
        content.append(TokenLogprobOut(_text(lp.piece), lp.logprob, list(lp.piece), top))
    return ChatLogprobs(content)


def legacy(entries: Sequence[LogEntry], offset: int) -> tuple[LegacyLogprobs, int]:
    """The entries' legacy logprobs, their text starting at `offset`
    characters; returns them and the offset after them."""
    out = LegacyLogprobs([], [], [], [])
    for e in entries:
        if e.token < 0:
            offset += len(e.text)
            continue
        lp = e.logprob
        out.tokens.append(_text(lp.piece) if lp is not None else e.text)
        out.token_logprobs.append(lp.logprob if lp is not None else None)
        out.top_logprobs.append({_text(t.piece): t.logprob for t in lp.top} if lp else None)
        out.text_offset.append(offset)
        offset += len(e.text)
    return out, offset
