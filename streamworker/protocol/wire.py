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
    COMPLETION = "completion"  # a raw prompt (text or token ids) -> text, no template
    EMBEDDING = "embedding"  # inputs -> one vector each, no generation


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class GenerationParams(msgspec.Struct, frozen=True, omit_defaults=True):
    """How to sample. Defaults are no-ops and are left off the wire."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = {}  # token id -> bias added to its logit
    # A GBNF grammar the output must match (structured output, forced tool
    # calls); empty: unconstrained. Compiled from JSON schemas by the gateway.
    grammar: str = ""
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, 0-20
    n: int = 1  # independent choices from one prompt
    # Legacy completions: the prompt comes back first (with its logprobs when
    # asked), as part of each choice.
    echo: bool = False


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Everything a worker needs to run the job. Which fields matter depends
    on the kind: `messages` for CHAT, `prompt` for COMPLETION, `inputs` for
    EMBEDDING."""

    kind: JobKind = JobKind.CHAT
    messages: list[Message] = []
    # COMPLETION: the raw prompt, text or token ids.
    prompt: str | list[int] = ""
    # EMBEDDING: the texts (or token id lists) to embed, in order.
    inputs: list[str | list[int]] = []
    params: GenerationParams = GenerationParams()
    # The gateway's X-Request-ID, so the worker's log lines for this job carry
    # it too (protocol/logs.py). Not secret, not the prompt.
    request_id: str = ""


class TopLogprob(msgspec.Struct, array_like=True, frozen=True):
    """One alternative for a position: the token, its bytes, its logprob."""

    token: int
    piece: bytes
    logprob: float


class TokenLogprob(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
    """The sampled token's bytes and logprob, and the best alternatives."""

    piece: bytes
    logprob: float
    top: list[TopLogprob] = []


class LogEntry(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
    """One logged token. Trailing defaults are left off, so a plain token is
    `[token, text]` on the wire."""

    token: int  # -1: text released at the end with no token of its own
    text: str
    choice: int = 0  # which of the job's n choices it belongs to
    logprob: TokenLogprob | None = None  # when the job asked for logprobs


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
    # n > 1: each choice's finish reason, by choice index (finish_reason is
    # choice 0's).
    finish_reasons: list[str] | None = None


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
