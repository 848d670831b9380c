"""msgspec structs for the OpenAI requests the gateway reads, and its model cards.

Every field of a request struct is decided in gateway/parsing.py: honoured,
or refused with a 400 naming it (tests/test_parsing.py walks them all).
The response bodies are in gateway/response_types.py.
Fields we do not know are ignored, as OpenAI's clients send many; fields we
know but cannot honour are listed here so that they are refused, not
silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1)]
# OpenAI documents seeds as 64-bit signed integers; the engines take the low bits.
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
# Extension: seconds this job may wait and run before it expires.
TimeoutSeconds = Annotated[float, msgspec.Meta(gt=0)]
# llama-server's sampling extensions, with its ranges: top_k 0 is off,
# min_p 0 is off, repeat_penalty 1 is off.
TopK = Annotated[int, msgspec.Meta(ge=0)]
MinP = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
RepeatPenalty = Annotated[float, msgspec.Meta(gt=0.0, le=10.0)]
ChoiceCount = Annotated[int, msgspec.Meta(ge=1)]
TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]
LegacyLogprobs = Annotated[int, msgspec.Meta(ge=0, le=5)]


class ContentPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class FunctionCall(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    arguments: str  # JSON text


class ToolCallIn(msgspec.Struct, forbid_unknown_fields=False):
    """A call in an assistant message of the history."""

    id: str
    function: FunctionCall
    type: str = "function"


class ChatMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=False):
    include_usage: bool = False


class JsonSchemaFormat(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    # The key is `schema` on the wire; the attribute may not shadow
    # msgspec's own names, so it is renamed.
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=False):
    type: str  # text, json_object or json_schema
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    function: FunctionDefinition


class FunctionName(msgspec.Struct, forbid_unknown_fields=False):
    name: str


class NamedToolChoice(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    function: FunctionName


class _Sampling(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """The fields both endpoints share."""

    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool | None = None  # null: not streamed, as in OpenAI's API
    stream_options: StreamOptions | None = None
    n: ChoiceCount | None = None  # null: 1
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    timeout: TimeoutSeconds | None = None
    # priority, default, flex or auto (gateway/parsing.py: service_tier).
    service_tier: str | None = None
    # llama-server's extensions.
    top_k: TopK | None = None
    min_p: MinP | None = None
    repeat_penalty: RepeatPenalty | None = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: MaxTokens | None = None
    tools: list[Tool] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The deprecated spelling of tools, still sent by older clients.
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling, kw_only=True):
    """Legacy /v1/completions: a raw prompt, no chat template. `prompt` is
    text, a list of texts, token ids or a list of token-id lists; its shape
    is checked in gateway/parsing.py (msgspec cannot tell list kinds apart
    in a union)."""

    prompt: str | list[Any]
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: LegacyLogprobs | None = None


class TokenizeRequest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """llama-server's POST /tokenize, with the model named."""

    content: str
    model: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    tokens: list[int]
    model: str | None = None


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "streamworker"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"
