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
    ResponseFormat,
    StreamOptions,
)
from gateway.openapi import DOCUMENT
from gateway.parsing import Caller, NewJob, parse_chat, parse_completion
from gateway.settings import GatewaySettings
from streamworker.protocol.wire import JobKind, Message

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
    """Accepted and, on purpose, changes nothing: the job equals the default one."""

    parse: Callable[..., NewJob]
    fields: dict[str, Any]
    why: str


def _params(job: NewJob) -> Any:
    return job.request.params


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
        "n": Refused(parse, {"n": 2}, "n"),
        "timeout": Honoured(parse, {"timeout": 5}, lambda j: j.timeout == 5),
        "user": Inert(
            parse, {"user": "u-42"}, "metadata for OpenAI's abuse tracking; never logged"
        ),
        "presence_penalty": Refused(parse, {"presence_penalty": 0.5}, "presence_penalty"),
        "frequency_penalty": Refused(parse, {"frequency_penalty": -1}, "frequency_penalty"),
        "logit_bias": Refused(parse, {"logit_bias": {"50256": -100}}, "logit_bias"),
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
        "tools": Refused(chat, {"tools": [{"type": "function"}]}, "tools"),
        "tool_choice": Refused(chat, {"tool_choice": "required"}, "tool_choice"),
        "functions": Refused(chat, {"functions": [{"name": "f"}]}, "functions"),
        "function_call": Refused(chat, {"function_call": "auto"}, "function_call"),
        "logprobs": Refused(chat, {"logprobs": True}, "logprobs"),
        "top_logprobs": Refused(chat, {"top_logprobs": 3}, "top_logprobs"),
        "response_format": Refused(
            chat, {"response_format": {"type": "json_object"}}, "response_format"
        ),
    },
    CompletionRequest: {
        **_shared(text),
        "prompt": Honoured(
            text,
            {"prompt": ["once upon"]},
            lambda j: j.request.messages == [Message("user", "once upon")],
        ),
        "best_of": Refused(text, {"best_of": 3}, "best_of"),
        "echo": Refused(text, {"echo": True}, "echo"),
        "suffix": Refused(text, {"suffix": "end"}, "suffix"),
        "logprobs": Refused(text, {"logprobs": 0}, "logprobs"),
    },
    ChatMessage: {
        "role": Honoured(
            chat, one_message(role="developer"), lambda j: j.request.messages[0].role == "system"
        ),
        "content": Honoured(
            chat, one_message(content="hello"), lambda j: j.request.messages[0].content == "hello"
        ),
        "name": Refused(chat, one_message(name="bob"), "messages[0].name"),
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
    StreamOptions: {
        "include_usage": Honoured(
            text,
            {"stream": True, "stream_options": {"include_usage": True}},
            lambda j: j.include_usage,
        ),
    },
    ResponseFormat: {
        # Only `text` is served, and it is what the default does already.
        "type": Refused(chat, {"response_format": {"type": "json_schema"}}, "response_format"),
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
        # Seeds are pinned at random when none is sent: compare the rest.
        assert msgspec.structs.replace(job.request.params, seed=0) == msgspec.structs.replace(
            default.request.params, seed=0
        )
        assert job.request.messages == default.request.messages
        assert (job.model, job.stream, job.include_usage, job.timeout) == (
            default.model,
            default.stream,
            default.include_usage,
            default.timeout,
        )


# -- no-op values of refused fields are fine ---------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"presence_penalty": 0, "frequency_penalty": 0.0},
        {"presence_penalty": None, "logit_bias": {}},
        {"tools": [], "tool_choice": "none", "functions": [], "function_call": "none"},
        {"logprobs": False, "top_logprobs": 0},
        {"response_format": {"type": "text"}},
        {"response_format": None, "stream_options": None, "n": 1},
        {"stream": True, "stream_options": {}},
        {"stream": None, "n": None},  # null is the default, as OpenAI takes it
    ],
)
def test_no_op_values_are_accepted(fields: dict[str, Any]) -> None:
    assert chat(**fields).model == "m"


def test_legacy_no_op_values_are_accepted() -> None:
    job = text(best_of=1, echo=False, suffix="", logit_bias=None, presence_penalty=0)
    assert job.request.messages == [Message("user", "hi")]


# -- the job ------------------------------------------------------------------------


def test_a_chat_job_carries_the_caller_and_the_defaults() -> None:
    job = chat(seed=7)
    assert job.model == "m"
    assert job.owner == "alice" and job.idempotency_key == "idem-1"
    assert job.request_id == job.request.request_id == "req-1"
    assert job.request.kind is JobKind.CHAT
    assert job.request.messages == [Message("user", "hi")]
    params = job.request.params
    assert (params.max_tokens, params.temperature, params.top_p, params.stop, params.seed) == (
        SETTINGS.default_max_tokens,
        1.0,
        1.0,
        (),
        7,
    )
    assert (job.stream, job.include_usage, job.timeout) == (False, False, None)


def test_a_seed_is_pinned_when_none_is_sent() -> None:
    seeds = {chat().request.params.seed for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=3, max_completion_tokens=4).request.params.max_tokens == 4


def test_empty_stop_strings_are_dropped() -> None:
    assert chat(stop="").request.params.stop == ()
    assert chat(stop=["", "z"]).request.params.stop == ("z",)


def test_a_prompt_is_one_user_message() -> None:
    assert text(prompt="abc").request.messages == [Message("user", "abc")]


# -- bad bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"", None),
        (b"   ", None),
        (b"{", None),
        (b"[1]", None),
        (b'{"model": "m"}', None),
        (b"\xff", None),
        (b"[" * 10_000, None),
    ],
)
def test_undecodable_bodies(body: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as info:
        parse_chat(body, SETTINGS, CALLER)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {}}, "stream_options"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {}}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": SETTINGS.max_tokens_limit + 1}, "max_tokens"),
        ({"max_completion_tokens": SETTINGS.max_tokens_limit + 1}, "max_completion_tokens"),
        ({"stop": ["a"] * (SETTINGS.max_stop_sequences + 1)}, "stop"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": SETTINGS.max_timeout_seconds + 1}, "timeout"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [{"role": "user", "content": "x" * (SETTINGS.max_message_chars + 1)}]},
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}] * (SETTINGS.max_messages + 1)},
            "messages",
        ),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
    ],
)
def test_bad_chat_fields(fields: dict[str, Any], param: str) -> None:
    assert refusal(chat, **fields).param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 2]}, "prompt[0]"),
        ({"prompt": "x" * (SETTINGS.max_message_chars + 1)}, "prompt"),
        ({"stream_options": {"include_usage": False}}, "stream_options"),
        ({"seed": 2**64}, "seed"),
        ({"n": 3}, "n"),
    ],
)
def test_bad_completion_fields(fields: dict[str, Any], param: str) -> None:
    assert refusal(text, **fields).param == param


def test_planned_response_formats_say_not_yet() -> None:
    for kind in ("json_object", "json_schema"):
        err = refusal(chat, response_format={"type": kind})
        assert "not supported yet" in err.message


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
