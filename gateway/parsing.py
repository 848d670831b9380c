"""A request body -> the job it asks for, or a 400 that names the bad param.

Pure: no I/O, so every rule here is unit-tested without a server. Each field
of the request structs (gateway/openai_types.py) is either honoured (it
shapes the job or the response) or refused with a 400 naming it; a value
that changes nothing (a zero penalty, the `text` response format, `user`)
is accepted. Nothing is written to Redis for a refused request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from gateway.errors import BadRequest
from gateway.openai_types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ResponseFormat,
)
from streamworker.protocol.wire import GenerationParams, JobKind, JobRequest, Message

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

T = TypeVar("T")

# OpenAI's roles -> the roles of a chat template; `developer` is the newer
# name of `system`.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Response formats that a later release will honour, refused until then.
PLANNED_FORMATS = frozenset({"json_object", "json_schema"})


@dataclass(frozen=True, slots=True)
class Caller:
    """What the job needs to know of the HTTP request besides its body."""

    request_id: str = ""
    owner: str = ""  # the API key's name; "" without a key
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be enqueued: what the worker runs (`request`), whose it
    is, and what the response needs to know."""

    model: str
    request: JobRequest
    owner: str
    idempotency_key: str | None
    stream: bool
    include_usage: bool
    timeout: float | None

    @property
    def request_id(self) -> str:
        return self.request.request_id


class Parser(Protocol):
    """One endpoint's body format: parse_chat or parse_completion."""

    def __call__(self, body: bytes, settings: GatewaySettings, caller: Caller) -> NewJob: ...


def _param_of(exc: msgspec.ValidationError) -> str | None:
    text = str(exc)
    if "`$." in text:
        return text.rsplit("`$.", 1)[1].rstrip("`")
    return None


def decode_body(body: bytes, cls: type[T]) -> T:
    if not body.strip():
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request: {exc}", param=_param_of(exc)) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None


def _refuse(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="unsupported_parameter")


def _zero_or_refuse(param: str, value: float | None) -> None:
    if value:  # None and 0 change nothing
        raise _refuse(param, f"{param} is not supported; send 0 or leave it out.")


def _check_response_format(fmt: ResponseFormat | None) -> None:
    if fmt is None or fmt.type == "text":
        return
    if fmt.type in PLANNED_FORMATS:
        raise _refuse(
            "response_format",
            f"response_format '{fmt.type}' is not supported yet; only 'text' is.",
        )
    raise BadRequest(
        f"Unknown response_format type '{fmt.type}'; expected 'text'.",
        param="response_format",
        code="invalid_value",
    )


def _check_shared(
    req: ChatCompletionRequest | CompletionRequest, settings: GatewaySettings
) -> None:
    """The checks both endpoints share."""
    if req.n not in (None, 1):
        raise _refuse("n", "Only n=1 is supported.")
    if req.stream_options is not None and not req.stream:
        raise BadRequest(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )
    if req.timeout is not None and req.timeout > settings.max_timeout_seconds:
        raise BadRequest(
            f"timeout must be at most {settings.max_timeout_seconds} seconds.", param="timeout"
        )
    # Penalties and biases would change which tokens are sampled; the engines
    # apply none, so only their no-op values pass.
    _zero_or_refuse("presence_penalty", req.presence_penalty)
    _zero_or_refuse("frequency_penalty", req.frequency_penalty)
    if req.logit_bias:
        raise _refuse("logit_bias", "logit_bias is not supported; leave it out.")


def _check_chat_only(req: ChatCompletionRequest) -> None:
    if req.tools:
        raise _refuse("tools", "Tool calling is not supported.")
    if req.tool_choice not in (None, "none"):
        raise _refuse(
            "tool_choice", "Tool calling is not supported; tool_choice may only be 'none'."
        )
    if req.functions:
        raise _refuse("functions", "Function calling is not supported.")
    if req.function_call not in (None, "none"):
        raise _refuse("function_call", "Function calling is not supported.")
    if req.logprobs:
        raise _refuse("logprobs", "logprobs are not supported.")
    _zero_or_refuse("top_logprobs", req.top_logprobs)
    _check_response_format(req.response_format)


def _check_completion_only(req: CompletionRequest) -> None:
    if req.best_of not in (None, 1):
        raise _refuse("best_of", "best_of is not supported; send 1 or leave it out.")
    if req.echo:
        raise _refuse("echo", "echo is not supported; leave it out.")
    if req.suffix:
        raise _refuse("suffix", "suffix (insertion) is not supported; leave it out.")
    if req.logprobs is not None:
        raise _refuse("logprobs", "logprobs are not supported.")


def _text_of(msg: ChatMessage, index: int) -> str:
    if isinstance(msg.content, str):
        return msg.content
    if msg.content is None:
        raise BadRequest("Message content is required.", param=f"messages[{index}].content")
    parts = []
    for j, part in enumerate(msg.content):
        param = f"messages[{index}].content[{j}]"
        if part.type != "text":
            raise _refuse(
                f"{param}.type", f"Content part type '{part.type}' is not supported; only 'text'."
            )
        if part.text is None:
            raise BadRequest("A text content part needs 'text'.", param=f"{param}.text")
        parts.append(part.text)
    return "".join(parts)


def _messages(raw: list[ChatMessage], settings: GatewaySettings) -> list[Message]:
    if not raw:
        raise BadRequest("messages must contain at least one message.", param="messages")
    if len(raw) > settings.max_messages:
        raise BadRequest(f"At most {settings.max_messages} messages are allowed.", param="messages")
    messages = []
    for i, m in enumerate(raw):
        role = ROLES.get(m.role)
        if role is None:
            raise BadRequest(
                f"Unknown role '{m.role}'; expected one of system, developer, user, assistant.",
                param=f"messages[{i}].role",
            )
        if m.name is not None:
            # A chat template has no place for it: dropping it would let one
            # participant's words pass as another's.
            raise _refuse(f"messages[{i}].name", "Message names are not supported; leave it out.")
        text = _text_of(m, i)
        if len(text) > settings.max_message_chars:
            raise BadRequest(
                f"Message {i} is longer than {settings.max_message_chars} characters.",
                param=f"messages[{i}].content",
            )
        messages.append(Message(role, text))
    return messages


def _prompt(prompt: str | list[str], settings: GatewaySettings) -> str:
    if isinstance(prompt, list):
        # A list is a batch: one completion per prompt. One is all we make.
        if len(prompt) != 1:
            raise _refuse("prompt", "Send exactly one prompt; a batch of prompts is not supported.")
        prompt = prompt[0]
    if len(prompt) > settings.max_message_chars:
        raise BadRequest("The prompt is too long.", param="prompt")
    return prompt


def _stops(stop: str | list[str] | None, settings: GatewaySettings) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > settings.max_stop_sequences:
        raise BadRequest(
            f"At most {settings.max_stop_sequences} stop sequences are allowed.", param="stop"
        )
    return tuple(s for s in stops if s)


def _max_tokens(value: int | None, settings: GatewaySettings, param: str) -> int:
    if value is None:
        return settings.default_max_tokens
    if value > settings.max_tokens_limit:
        raise BadRequest(f"{param} must be at most {settings.max_tokens_limit}.", param=param)
    return value


def _job(
    req: ChatCompletionRequest | CompletionRequest,
    messages: list[Message],
    max_tokens: int,
    settings: GatewaySettings,
    caller: Caller,
) -> NewJob:
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=_stops(req.stop, settings),
        # Pin a seed even when the client sent none, so a rerun after a crash
        # samples the same way where the engine allows.
        seed=req.seed if req.seed is not None else random.randrange(1 << 31),
    )
    return NewJob(
        model=req.model,
        request=JobRequest(
            kind=JobKind.CHAT, messages=messages, params=params, request_id=caller.request_id
        ),
        owner=caller.owner,
        idempotency_key=caller.idempotency_key,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        timeout=req.timeout,
    )


def parse_chat(body: bytes, settings: GatewaySettings, caller: Caller) -> NewJob:
    """A /v1/chat/completions (or /v1/jobs) body -> its job, or BadRequest."""
    req = decode_body(body, ChatCompletionRequest)
    _check_shared(req, settings)
    _check_chat_only(req)
    messages = _messages(req.messages, settings)
    # max_completion_tokens is the newer name; it wins when both are sent.
    if req.max_completion_tokens is not None:
        max_tokens = _max_tokens(req.max_completion_tokens, settings, "max_completion_tokens")
    else:
        max_tokens = _max_tokens(req.max_tokens, settings, "max_tokens")
    return _job(req, messages, max_tokens, settings, caller)


def parse_completion(body: bytes, settings: GatewaySettings, caller: Caller) -> NewJob:
    """A legacy /v1/completions body -> its job (the prompt as one user
    message), or BadRequest."""
    req = decode_body(body, CompletionRequest)
    _check_shared(req, settings)
    _check_completion_only(req)
    prompt = _prompt(req.prompt, settings)
    max_tokens = _max_tokens(req.max_tokens, settings, "max_tokens")
    return _job(req, [Message("user", prompt)], max_tokens, settings, caller)
