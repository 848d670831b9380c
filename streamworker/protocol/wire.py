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
import sys
from array import array

import msgspec


class JobKind(enum.StrEnum):
    """What a job asks a worker to do. Each kind names the engine call that
    serves it; a worker refuses a kind it does not serve (a permanent error)."""

    CHAT = "chat"  # messages -> the model's chat template -> generated text
    COMPLETION = "completion"  # a raw prompt (text or token ids) -> text, no template
    EMBEDDING = "embedding"  # inputs -> one vector each, no generation


class ToolCall(msgspec.Struct, frozen=True):
    """A function call an assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str  # JSON text, as the client sent it


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """One chat message. Beyond role and content, the fields a tool round
    trip needs; they are left off the wire when empty, so a plain message is
    `{"role", "content"}` as before."""

    role: str  # system, user, assistant or tool
    content: str
    # Who spoke (a participant's name), or for `tool`, the function that answered.
    name: str = ""
    tool_calls: list[ToolCall] = []  # assistant: the calls it made
    tool_call_id: str = ""  # tool: the call this message answers


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
    # Independent choices from one prompt; choice i samples with seed + i,
    # so each is reproducible on its own.
    n: int = 1
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
    """One logged token, as a JSON array in field order (msgspec writes every
    field of an array-like struct, defaults included: a plain token is
    `[token, text, 0, null, false, ""]`; a decoder also takes the shorter
    arrays written before the later fields existed).

    - `choice`: entries of the n choices interleave in the log; each choice's
      entries, in log order, are that choice's text.
    - `logprob` (when the job asked for logprobs): the token's log-softmax
      over the whole vocabulary from the model's raw logits, before logit
      bias, penalties, grammar or truncation, as OpenAI reports it; `top`
      holds the `top_logprobs` likeliest tokens, best first. It is logged
      with its token, so a resumed stream shows exactly what a client saw.
    - `echo` (legacy completions with `echo`): the entry repeats a prompt
      token, not a generated one. Each choice starts with one echo entry per
      prompt token (a leading BOS left out), their text being the prompt's;
      with logprobs, the first has `logprob` null (nothing precedes it, as
      OpenAI reports) and the others carry the prompt token's logprob.
      Echo entries do not count as completion tokens.
    - `finish`: the last entry of a choice says how it ended ("stop" or
      "length"); its token is -1 and its text the held-back tail, often "".
      A resumed job does not run a choice that has one again. A choice
      stopped by a cancel or a deadline has none.
    """

    token: int  # -1: text released at the end with no token of its own
    text: str
    choice: int = 0  # which of the job's n choices it belongs to
    logprob: TokenLogprob | None = None  # when the job asked for logprobs
    echo: bool = False  # a prompt token repeated (legacy `echo`), not generated
    finish: str = ""  # on a choice's last entry: how it ended


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


class EmbeddingResult(msgspec.Struct, frozen=True, kw_only=True):
    """An embedding job's answer, written by the worker into the job record's
    `result` field by the same fenced finish step that ends the job, so it
    lives exactly as long as the record. The vectors are float32,
    little-endian, row after row (base64 in JSON): a tenth of the size of
    JSON numbers, and exactly what the engine computed."""

    dim: int
    vectors: bytes
    tokens: list[int]  # tokens of each input, in order

    @classmethod
    def of(cls, vectors: list[list[float]], tokens: list[int]) -> EmbeddingResult:
        flat = array("f", (x for v in vectors for x in v))
        if sys.byteorder == "big":  # pragma: no cover - the wire is little-endian
            flat.byteswap()
        return cls(dim=len(vectors[0]) if vectors else 0, vectors=flat.tobytes(), tokens=tokens)

    def rows(self) -> list[list[float]]:
        flat = array("f")
        flat.frombytes(self.vectors)
        if sys.byteorder == "big":  # pragma: no cover - the wire is little-endian
            flat.byteswap()
        values = flat.tolist()
        if not self.dim:
            return []
        return [values[i : i + self.dim] for i in range(0, len(values), self.dim)]


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


_embedding_decoder = msgspec.json.Decoder(EmbeddingResult)


def decode_embedding(data: bytes | str) -> EmbeddingResult:
    return _embedding_decoder.decode(data)
