"""msgspec structs for the OpenAI requests and responses the gateway speaks.

Every field of a request struct is decided in gateway/parsing.py: honoured,
or refused with a 400 naming it (tests/test_parsing.py walks them all).
Fields we do not know are ignored, as OpenAI's clients send many; fields we
know but cannot honour are listed here so that they are refused, not
silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1)]
# OpenAI documents seeds as 64-bit signed integers; the engines take the low bits.
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
# Extension: seconds this job may wait and run before it expires.
TimeoutSeconds = Annotated[float, msgspec.Meta(gt=0)]


class ContentPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=False):
    include_usage: bool = False


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=False):
    # text, json_object or json_schema; the schema itself is not read while
    # only text is served.
    type: str


class ChatCompletionRequest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    model: str
    messages: list[ChatMessage]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool | None = None  # null: not streamed, as in OpenAI's API
    stream_options: StreamOptions | None = None
    n: int | None = None  # null: 1
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    # The deprecated spelling of tools, still sent by older clients.
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    timeout: TimeoutSeconds | None = None


class CompletionRequest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """Legacy /v1/completions: a prompt, run as one user message."""

    model: str
    prompt: str | list[str]
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool | None = None  # null: not streamed, as in OpenAI's API
    stream_options: StreamOptions | None = None
    n: int | None = None  # null: 1
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    timeout: TimeoutSeconds | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Delta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class AssistantMessage(msgspec.Struct):
    role: str
    content: str


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class TextChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: None = None
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


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "streamworker"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"
