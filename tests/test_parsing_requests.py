"""Request parsing, without a server: what a good body's job looks like
(defaults, pinned seeds, raw prompts in every shape, tools described first,
a tool round trip, schemas compiled), the no-op values every endpoint
accepts, and the 400s that name the param of a bad one. The field walk
itself is tests/test_parsing.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import BadRequest
from gateway.parsing import parse_chat
from streamworker.protocol.wire import JobKind, Message, ToolCall
from tests.test_parsing import (
    ASSISTANT_CALL,
    CALLER,
    SETTINGS,
    WEATHER,
    chat,
    refusal,
    schema_format,
    text,
    tool_def,
)

pytestmark = pytest.mark.unit


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
    assert job.request.prompt == "hi" and not job.request.messages


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


def test_a_prompt_is_raw() -> None:
    job = text(prompt="abc")
    assert job.request.kind is JobKind.COMPLETION
    assert job.request.prompt == "abc" and not job.request.messages
    assert job.batch == ()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("once", ["once"]),
        (["a", "b", "c"], ["a", "b", "c"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (["a", [5]], ["a", [5]]),
    ],
)
def test_every_prompt_shape_is_a_job_each(prompt: Any, expected: list[Any]) -> None:
    job = text(prompt=prompt, n=2)
    assert [r.prompt for r in job.requests] == expected
    assert all(r.kind is JobKind.COMPLETION and r.params.n == 2 for r in job.requests)
    # One seed for the batch: each prompt samples as it would alone.
    assert len({r.params.seed for r in job.requests}) == 1


def test_tools_are_described_first_and_forced_calls_get_a_grammar() -> None:
    job = chat(tools=[WEATHER], tool_choice="required", messages=[{"role": "user", "content": "x"}])
    first = job.request.messages[0]
    assert first.role == "system" and '"tool_calls"' in first.content
    assert job.request.messages[1:] == [Message("user", "x")]
    assert "get_weather" in job.request.params.grammar
    auto = chat(tools=[WEATHER])
    assert auto.tools is not None and auto.tools.mode == "auto"
    assert auto.request.params.grammar == ""  # auto: the model decides
    none = chat(tools=[WEATHER], tool_choice="none")
    assert none.tools is None and none.request.messages == [Message("user", "hi")]


def test_a_tool_round_trip_is_accepted() -> None:
    job = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            ASSISTANT_CALL,
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "f"},
        ]
    )
    assert job.request.messages[1] == Message(
        "assistant", "", tool_calls=[ToolCall("call_1", "f", "{}")]
    )
    assert job.request.messages[2] == Message("tool", "sunny", name="f", tool_call_id="call_1")


def test_json_schema_compiles_to_a_grammar() -> None:
    grammar = chat(**schema_format()).request.params.grammar
    assert "root ::=" in grammar and '\\"zebra\\"' in grammar


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
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]},
            "messages[0].tool_call_id",
        ),
        ({"messages": [{**ASSISTANT_CALL, "role": "user"}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
        ({"n": 0}, "n"),
        ({"n": SETTINGS.max_n + 1}, "n"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"5": "a"}}, "logit_bias"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        (schema_format(name=""), "response_format"),
        (schema_format(schema={"type": "no-such-type"}), "response_format"),
        (schema_format(schema={"$ref": "#/nowhere"}), "response_format"),
        (schema_format(schema=[1]), "response_format"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"tools": [tool_def(name="bad name!")]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{**WEATHER, "type": "code"}]}, "tools[0].type"),
        ({"tools": [tool_def(parameters={"type": "nope"})], "tool_choice": "required"}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        (
            {"tools": [WEATHER], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
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
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt[1]"),
        ({"prompt": [[1], []]}, "prompt[1]"),
        ({"prompt": [-1, 2]}, "prompt[0]"),
        ({"prompt": [[1, 2.5]]}, "prompt[0][1]"),
        ({"prompt": [{"a": 1}]}, "prompt[0]"),
        ({"prompt": ["a"] * (SETTINGS.max_batch_prompts + 1)}, "prompt"),
        ({"prompt": "x" * (SETTINGS.max_message_chars + 1)}, "prompt"),
        ({"stream_options": {"include_usage": False}}, "stream_options"),
        ({"seed": 2**64}, "seed"),
        ({"n": SETTINGS.max_n + 1}, "n"),
        ({"logprobs": 6}, "logprobs"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "tail"}, "suffix"),
    ],
)
def test_bad_completion_fields(fields: dict[str, Any], param: str) -> None:
    assert refusal(text, **fields).param == param
