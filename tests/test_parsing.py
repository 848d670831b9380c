"""Request parsing, without a server: good bodies become the job they ask
for, bad ones a 400 naming the param. And every field of every request
struct is decided: honoured (the test shows where its value lands), or
refused with a 400 naming it. A field added to a struct without a decision
fails `test_every_field_is_decided`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from gateway.errors import BadRequest
from gateway.openai_types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    FunctionCall,
    FunctionDefinition,
    FunctionName,
    JsonSchemaFormat,
    NamedToolChoice,
    ResponseFormat,
    StreamOptions,
    Tool,
    ToolCallIn,
)
from gateway.openapi import DOCUMENT
from gateway.parsing import Caller, NewJob, parse_chat, parse_completion
from gateway.settings import GatewaySettings
from streamworker.protocol.wire import JobKind, Message, ToolCall

pytestmark = pytest.mark.unit

SETTINGS = GatewaySettings()
CALLER = Caller(request_id="req-1", owner="alice", idempotency_key="idem-1")
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TEXT: dict[str, Any] = {"model": "m", "prompt": "hi"}


def chat(**fields: Any) -> NewJob:
    return parse_chat(json.dumps({**CHAT, **fields}).encode(), SETTINGS, CALLER)


def text(**fields: Any) -> NewJob:
    return parse_completion(json.dumps({**TEXT, **fields}).encode(), SETTINGS, CALLER)


def one_message(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi", **fields}]}


def refusal(parse: Callable[..., NewJob], **fields: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(**fields)
    return info.value


# -- every field, decided ------------------------------------------------------------


@dataclass(frozen=True)
class Honoured:
    """Sending `fields` gives a job for which `shows` holds (and the default does not)."""

    parse: Callable[..., NewJob]
    fields: dict[str, Any]
    shows: Callable[[NewJob], bool]


@dataclass(frozen=True)
class Refused:
    """Sending `fields` is a 400 whose param is `param`."""

    parse: Callable[..., NewJob]
    fields: dict[str, Any]
    param: str


@dataclass(frozen=True)
class Inert:
    """Accepted and, on purpose, changes nothing: the job equals the one
    `base` gives (the default request when `base` is empty)."""

    parse: Callable[..., NewJob]
    fields: dict[str, Any]
    why: str
    base: dict[str, Any] | None = None


def _params(job: NewJob) -> Any:
    return job.request.params


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}


def tool_def(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {**WEATHER["function"], **function}}


def schema_format(**spec: Any) -> dict[str, Any]:
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "thing",
                "schema": {"type": "object", "properties": {"zebra": {"type": "integer"}}},
                **spec,
            },
        }
    }


def _instructions(job: NewJob) -> str:
    first = job.request.messages[0]
    return first.content if first.role == "system" else ""


def _call0(job: NewJob) -> ToolCall | None:
    calls = job.request.messages[0].tool_calls
    return calls[0] if calls else None


ASSISTANT_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ],
}


def _shared(parse: Callable[..., NewJob]) -> dict[str, Honoured | Refused | Inert]:
    """Fields both request structs have, decided alike."""
    return {
        "model": Honoured(parse, {"model": "other"}, lambda j: j.model == "other"),
        "max_tokens": Honoured(parse, {"max_tokens": 7}, lambda j: _params(j).max_tokens == 7),
        "temperature": Honoured(
            parse, {"temperature": 0.25}, lambda j: _params(j).temperature == 0.25
        ),
        "top_p": Honoured(parse, {"top_p": 0.5}, lambda j: _params(j).top_p == 0.5),
        "stop": Honoured(parse, {"stop": ["x", "y"]}, lambda j: _params(j).stop == ("x", "y")),
        "seed": Honoured(parse, {"seed": -(2**63)}, lambda j: _params(j).seed == -(2**63)),
        "stream": Honoured(parse, {"stream": True}, lambda j: j.stream),
        "stream_options": Honoured(
            parse,
            {"stream": True, "stream_options": {"include_usage": True}},
            lambda j: j.include_usage,
        ),
        "n": Honoured(parse, {"n": 3}, lambda j: _params(j).n == 3),
        "timeout": Honoured(parse, {"timeout": 5}, lambda j: j.timeout == 5),
        "service_tier": Honoured(parse, {"service_tier": "flex"}, lambda j: j.tier == "flex"),
        "user": Inert(
            parse, {"user": "u-42"}, "metadata for OpenAI's abuse tracking; never logged"
        ),
        "presence_penalty": Honoured(
            parse, {"presence_penalty": 0.5}, lambda j: _params(j).presence_penalty == 0.5
        ),
        "frequency_penalty": Honoured(
            parse, {"frequency_penalty": -1}, lambda j: _params(j).frequency_penalty == -1
        ),
        "logit_bias": Honoured(
            parse,
            {"logit_bias": {"50256": -100, "7": 2.5}},
            lambda j: _params(j).logit_bias == {50256: -100.0, 7: 2.5},
        ),
        "top_k": Honoured(parse, {"top_k": 40}, lambda j: _params(j).top_k == 40),
        "min_p": Honoured(parse, {"min_p": 0.05}, lambda j: _params(j).min_p == 0.05),
        "repeat_penalty": Honoured(
            parse, {"repeat_penalty": 1.1}, lambda j: _params(j).repeat_penalty == 1.1
        ),
    }


DECISIONS: dict[type[msgspec.Struct], dict[str, Honoured | Refused | Inert]] = {
    ChatCompletionRequest: {
        **_shared(chat),
        "messages": Honoured(
            chat,
            {"messages": [{"role": "system", "content": "be"}, {"role": "user", "content": "x"}]},
            lambda j: j.request.messages == [Message("system", "be"), Message("user", "x")],
        ),
        "max_completion_tokens": Honoured(
            chat, {"max_completion_tokens": 9}, lambda j: _params(j).max_tokens == 9
        ),
        "tools": Honoured(
            chat,
            {"tools": [WEATHER]},
            lambda j: j.tools is not None and "get_weather" in _instructions(j),
        ),
        "tool_choice": Honoured(
            chat,
            {"tools": [WEATHER], "tool_choice": "required"},
            lambda j: j.tools is not None and j.tools.mode == "required" and _params(j).grammar,
        ),
        "parallel_tool_calls": Honoured(
            chat,
            {"tools": [WEATHER], "parallel_tool_calls": False},
            lambda j: j.tools is not None and not j.tools.parallel,
        ),
        "functions": Refused(chat, {"functions": [{"name": "f"}]}, "functions"),
        "function_call": Refused(chat, {"function_call": "auto"}, "function_call"),
        "logprobs": Honoured(chat, {"logprobs": True}, lambda j: _params(j).logprobs),
        "top_logprobs": Honoured(
            chat, {"logprobs": True, "top_logprobs": 3}, lambda j: _params(j).top_logprobs == 3
        ),
        "response_format": Honoured(
            chat, {"response_format": {"type": "json_object"}}, lambda j: bool(_params(j).grammar)
        ),
    },
    CompletionRequest: {
        **_shared(text),
        "prompt": Honoured(
            text,
            {"prompt": ["once upon"]},
            lambda j: j.request.prompt == "once upon" and j.request.kind is JobKind.COMPLETION,
        ),
        "best_of": Refused(text, {"best_of": 3}, "best_of"),
        "echo": Honoured(text, {"echo": True}, lambda j: _params(j).echo),
        "suffix": Refused(text, {"suffix": "end"}, "suffix"),
        "logprobs": Honoured(
            text,
            {"logprobs": 2},
            lambda j: _params(j).logprobs and _params(j).top_logprobs == 2,
        ),
    },
    ChatMessage: {
        "role": Honoured(
            chat, one_message(role="developer"), lambda j: j.request.messages[0].role == "system"
        ),
        "content": Honoured(
            chat, one_message(content="hello"), lambda j: j.request.messages[0].content == "hello"
        ),
        "name": Honoured(
            chat, one_message(name="bob"), lambda j: j.request.messages[0].name == "bob"
        ),
        "tool_calls": Honoured(
            chat,
            {"messages": [ASSISTANT_CALL]},
            lambda j: j.request.messages[0].tool_calls == [ToolCall("call_1", "f", "{}")],
        ),
        "tool_call_id": Honoured(
            chat,
            {"messages": [{"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]},
            lambda j: j.request.messages[0].tool_call_id == "call_1",
        ),
    },
    ContentPart: {
        "type": Refused(
            chat, one_message(content=[{"type": "image_url"}]), "messages[0].content[0].type"
        ),
        "text": Honoured(
            chat,
            one_message(content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
            lambda j: j.request.messages[0].content == "ab",
        ),
    },
    ToolCallIn: {
        "id": Honoured(
            chat, {"messages": [ASSISTANT_CALL]}, lambda j: j.request.messages[0].tool_calls
        ),
        "function": Honoured(
            chat,
            {"messages": [ASSISTANT_CALL]},
            lambda j: _call0(j) is not None and _call0(j).name == "f",
        ),
        "type": Refused(
            chat,
            {
                "messages": [
                    {
                        **ASSISTANT_CALL,
                        "tool_calls": [{**ASSISTANT_CALL["tool_calls"][0], "type": "x"}],
                    }
                ]
            },
            "messages[0].tool_calls[0].type",
        ),
    },
    FunctionCall: {
        "name": Honoured(
            chat,
            {"messages": [ASSISTANT_CALL]},
            lambda j: _call0(j) is not None and _call0(j).name == "f",
        ),
        "arguments": Honoured(
            chat,
            {"messages": [ASSISTANT_CALL]},
            lambda j: _call0(j) is not None and _call0(j).arguments == "{}",
        ),
    },
    StreamOptions: {
        "include_usage": Honoured(
            text,
            {"stream": True, "stream_options": {"include_usage": True}},
            lambda j: j.include_usage,
        ),
    },
    ResponseFormat: {
        "type": Honoured(
            chat, {"response_format": {"type": "json_object"}}, lambda j: bool(_params(j).grammar)
        ),
        "json_schema": Honoured(chat, schema_format(), lambda j: "zebra" in _params(j).grammar),
    },
    JsonSchemaFormat: {
        "name": Refused(chat, schema_format(name=""), "response_format"),
        "schema_": Honoured(chat, schema_format(), lambda j: "zebra" in _params(j).grammar),
        "description": Inert(
            chat,
            schema_format(description="a thing"),
            "tells the model what the schema means; the grammar holds it to the schema",
            base=schema_format(),
        ),
        "strict": Inert(
            chat,
            schema_format(strict=True),
            "the grammar enforces the schema whether or not strict is asked for",
            base=schema_format(),
        ),
    },
    Tool: {
        "type": Refused(chat, {"tools": [{**WEATHER, "type": "retrieval"}]}, "tools[0].type"),
        "function": Honoured(
            chat, {"tools": [WEATHER]}, lambda j: "get_weather" in _instructions(j)
        ),
    },
    FunctionDefinition: {
        "name": Honoured(
            chat, {"tools": [tool_def(name="lookup")]}, lambda j: "lookup" in _instructions(j)
        ),
        "description": Honoured(
            chat,
            {"tools": [tool_def(description="Moon phase")]},
            lambda j: "Moon phase" in _instructions(j),
        ),
        "parameters": Honoured(
            chat,
            {
                "tools": [
                    tool_def(
                        parameters={"type": "object", "properties": {"quux": {"type": "integer"}}}
                    )
                ],
                "tool_choice": "required",
            },
            lambda j: "quux" in _params(j).grammar,
        ),
        "strict": Inert(
            chat,
            {"tools": [tool_def(strict=True)]},
            "forced calls always follow the parameters' schema (a grammar)",
            base={"tools": [WEATHER]},
        ),
    },
    NamedToolChoice: {
        "type": Refused(
            chat,
            {"tools": [WEATHER], "tool_choice": {"type": "x", "function": {"name": "get_weather"}}},
            "tool_choice",
        ),
        "function": Honoured(
            chat,
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            lambda j: j.tools is not None and j.tools.forced == "get_weather",
        ),
    },
    FunctionName: {
        "name": Honoured(
            chat,
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            lambda j: j.tools is not None and j.tools.mode == "function",
        ),
    },
}
CASES = [(cls.__name__, name, d) for cls, fields in DECISIONS.items() for name, d in fields.items()]
IDS = [f"{cls}.{name}" for cls, name, _ in CASES]


def _request_structs() -> set[type[msgspec.Struct]]:
    """Every struct reachable from the two request bodies: a nested struct
    added later is found here and must be decided too."""
    found: set[type[msgspec.Struct]] = set()

    def walk(t: msgspec.inspect.Type) -> None:
        if isinstance(t, msgspec.inspect.StructType):
            if t.cls in found:
                return
            found.add(t.cls)
            for field in t.fields:
                walk(field.type)
        for attr in ("type", "item_type", "key_type", "value_type"):
            if isinstance(inner := getattr(t, attr, None), msgspec.inspect.Type):
                walk(inner)
        for inner in getattr(t, "types", ()):
            walk(inner)

    for root in (ChatCompletionRequest, CompletionRequest):
        walk(msgspec.inspect.type_info(root))
    return found


def test_every_field_is_decided() -> None:
    assert _request_structs() == set(DECISIONS)
    for cls, decided in DECISIONS.items():
        assert set(cls.__struct_fields__) == set(decided), cls.__name__


@pytest.mark.parametrize(("cls", "name", "decision"), CASES, ids=IDS)
def test_field_decision(cls: str, name: str, decision: Honoured | Refused | Inert) -> None:
    default = decision.parse()
    if isinstance(decision, Refused):
        err = refusal(decision.parse, **decision.fields)
        assert err.param == decision.param
        assert err.status == 400 and err.message
    elif isinstance(decision, Honoured):
        assert decision.shows(decision.parse(**decision.fields))
        assert not decision.shows(default), "the default already shows it: prove nothing"
    else:
        job = decision.parse(**decision.fields)
        default = decision.parse(**(decision.base or {}))
        # Seeds are pinned at random when none is sent: compare the rest.
        assert msgspec.structs.replace(job.request.params, seed=0) == msgspec.structs.replace(
            default.request.params, seed=0
        )
        assert job.request.messages == default.request.messages
        assert (job.model, job.stream, job.include_usage, job.timeout, job.tools) == (
            default.model,
            default.stream,
            default.include_usage,
            default.timeout,
            default.tools,
        )


def test_every_field_is_documented() -> None:
    """The OpenAPI document lists exactly the fields the structs read."""
    paths = DOCUMENT["paths"]
    for path, cls in [
        ("/v1/chat/completions", ChatCompletionRequest),
        ("/v1/jobs", ChatCompletionRequest),
        ("/v1/completions", CompletionRequest),
    ]:
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == set(cls.__struct_fields__), path
