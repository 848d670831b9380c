"""What travels between the gateway and the workers.

- The job request (a stream entry's `payload`): its `kind`, the messages,
  the generation parameters and the request id.
- The job's pub/sub channel: JSON objects with a `type`. Token events carry
  the sequence number of their first token and the attempt that made them;
  a relay forwards each sequence number once.
- The token log (a Redis list): one `LogEntry` per token; entry i is
  sequence number i.
"""

from __future__ import annotations

import enum

import msgspec


class JobKind(enum.StrEnum):
    """What a job asks a worker to do. Each kind names the engine call that
    serves it; a worker refuses a kind it does not serve (a permanent error)."""

    CHAT = "chat"  # messages -> the model's chat template -> generated text


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class GenerationParams(msgspec.Struct, frozen=True):
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


class JobRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker needs to run the job."""

    kind: JobKind = JobKind.CHAT
    messages: list[Message]
    params: GenerationParams
    # The gateway's X-Request-ID, so the worker's log lines for this job carry
    # it too (protocol/logs.py). Not secret, not the prompt.
    request_id: str = ""


class LogEntry(msgspec.Struct, array_like=True, frozen=True):
    token: int  # -1: text released at the end with no token of its own
    text: str


class Tokens(msgspec.Struct, tag_field="type", tag="tokens", frozen=True):
    seq: int
    attempt: int
    tokens: list[LogEntry]


class Status(msgspec.Struct, tag_field="type", tag="status", frozen=True):
    status: str
    attempt: int = 0


class End(msgspec.Struct, tag_field="type", tag="end", frozen=True):
    """The job reached a terminal status. `code`/`message` explain failures
    (outcomes.EndCode)."""

    status: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: str | None = None
    message: str | None = None


Event = Tokens | Status | End

_event_decoder = msgspec.json.Decoder(Event)
_log_decoder = msgspec.json.Decoder(LogEntry)
_request_decoder = msgspec.json.Decoder(JobRequest)
_encoder = msgspec.json.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes | str) -> Event:
    return _event_decoder.decode(data)


def decode_log(entries: list[bytes]) -> list[LogEntry]:
    return [_log_decoder.decode(e) for e in entries]


def decode_request(payload: bytes) -> JobRequest:
    return _request_decoder.decode(payload)
