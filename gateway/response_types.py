"""msgspec structs for the bodies and chunks the gateway answers with, in
OpenAI's shapes (chat completions, legacy text completions), logprobs and
tool calls included. Field order is the wire order clients have seen."""

from __future__ import annotations

from typing import Literal

import msgspec


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# -- logprobs -------------------------------------------------------------------------


class TopLogprobOut(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(msgspec.Struct):
    """One token of `choices[].logprobs.content[]` (chat)."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChatLogprobs(msgspec.Struct):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class LegacyLogprobs(msgspec.Struct):
    """`choices[].logprobs` of a text completion: parallel lists."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


# -- tool calls -----------------------------------------------------------------------


class FunctionCallOut(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str
    function: FunctionCallOut
    type: str = "function"


class FunctionDelta(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    """A streamed piece of a call: the first names it (id, type, name),
    the rest carry its arguments' text."""

    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


# -- chat -----------------------------------------------------------------------------


class Delta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    # The tier the job ran in (OpenAI's `service_tier`).
    service_tier: str | None = None


class AssistantMessage(msgspec.Struct):
    role: str
    content: str | None
    # Only a message with calls carries the key at all.
    tool_calls: list[ToolCallOut] | msgspec.UnsetType = msgspec.UNSET


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    service_tier: str | None = None


# -- legacy text completions -------------------------------------------------------------


class TextChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: LegacyLogprobs | None = None
    finish_reason: str | None = None


class TextCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class TextCompletionChunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[TextChoice]
    # Only the closing usage chunk carries the key at all.
    usage: Usage | msgspec.UnsetType = msgspec.UNSET
