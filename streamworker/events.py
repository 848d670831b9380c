"""What travels on a job's pub/sub channel, and what its token log holds.

Channel messages are JSON objects with a `type`. Token events carry the
sequence number of their first token and the attempt that made them; the
relay forwards each sequence number once. The log (a Redis list) holds one
`LogEntry` per token; entry i is sequence number i.
"""

from __future__ import annotations

import msgspec


class LogEntry(msgspec.Struct, array_like=True, frozen=True):
    token: int
    text: str


class Tokens(msgspec.Struct, tag_field="type", tag="tokens", frozen=True):
    seq: int
    attempt: int
    tokens: list[LogEntry]


class Status(msgspec.Struct, tag_field="type", tag="status", frozen=True):
    status: str
    attempt: int = 0


class End(msgspec.Struct, tag_field="type", tag="end", frozen=True):
    """The job reached a terminal status. `code`/`message` explain failures."""

    status: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: str | None = None
    message: str | None = None


Event = Tokens | Status | End

_decoder = msgspec.json.Decoder(Event)
_log_decoder = msgspec.json.Decoder(LogEntry)
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes | str) -> Event:
    return _decoder.decode(data)


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_log(entries: list[bytes]) -> list[LogEntry]:
    return [_log_decoder.decode(e) for e in entries]
