"""Tool calling, from the request to the answer.

Unit: the tool plan and its 400s, the instructions and the forced-call
grammar, reading calls out of what a model wrote, the streamed hold-back of
text that may be calls, and the generic history format the worker renders.
End to end (the official client, the bundled model, both engines, streamed
and not): forced calls that parse and validate against the tool's schema,
`auto`, a full round trip with `role: "tool"`, and a pydantic function tool.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pydantic
import pytest

from gateway import tools
from gateway.choices import CallArgs, Calls, CallScanner, CallStart, ChoiceState, Content
from gateway.errors import BadRequest
from gateway.openai_types import FunctionDefinition, FunctionName, NamedToolChoice, Tool
from streamworker.protocol.wire import LogEntry, Message, ToolCall
from tests.model_stacks import MODEL, client, stack_fixture

unit = pytest.mark.unit

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}


def _tool(name: str = "get_weather", parameters: dict | None = None) -> Tool:
    return Tool("function", FunctionDefinition(name, "The weather", parameters or WEATHER_PARAMS))


def _plan(choice: object = "required", parallel: bool | None = None) -> tools.ToolPlan:
    plan = tools.plan([_tool(), _tool("get_time", {"type": "object"})], choice, parallel)  # type: ignore[arg-type]
    assert plan is not None
    return plan


@unit
def test_plans() -> None:
    assert tools.plan(None, None, None) is None
    assert tools.plan([_tool()], "none", None) is None
    assert _plan("auto").mode == "auto" and not _plan("auto").constrained
    assert _plan(None).mode == "auto"
    required = _plan("required", parallel=False)
    assert required.constrained and not required.parallel
    named = _plan(NamedToolChoice("function", FunctionName("get_time")))
    assert (named.mode, named.forced, named.parallel) == ("function", "get_time", False)


@unit
@pytest.mark.parametrize(
    ("tools_", "choice", "param"),
    [
        (None, "required", "tool_choice"),
        ([_tool()], "sometimes", "tool_choice"),
        ([_tool()], NamedToolChoice("function", FunctionName("nope")), "tool_choice"),
        ([_tool()], NamedToolChoice("other", FunctionName("get_weather")), "tool_choice"),
        ([_tool(), _tool()], "auto", "tools[1].function.name"),
        ([_tool("a b")], "auto", "tools[0].function.name"),
        ([Tool("code_interpreter", FunctionDefinition("x"))], "auto", "tools[0].type"),
    ],
)
def test_bad_plans_name_their_param(tools_: list[Tool] | None, choice: object, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        tools.plan(tools_, choice, None)  # type: ignore[arg-type]
    assert info.value.param == param


@unit
def test_forced_calls_schema_and_grammar() -> None:
    schema = tools.calls_schema(_plan("required", parallel=False))
    calls = schema["properties"]["tool_calls"]
    assert (calls["minItems"], calls["maxItems"]) == (1, 1)
    assert [i["properties"]["name"] for i in calls["items"]["anyOf"]] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]
    # Parallel: at most one call per listed tool, so a forced answer ends.
    assert tools.calls_schema(_plan("required"))["properties"]["tool_calls"]["maxItems"] == 2
    named = tools.calls_schema(_plan(NamedToolChoice("function", FunctionName("get_weather"))))
    assert named["properties"]["tool_calls"]["items"]["properties"]["name"] == {
        "const": "get_weather"
    }
    grammar = tools.grammar(_plan())
    assert "root ::=" in grammar and "get_weather" in grammar and "celsius" in grammar
    assert tools.grammar(_plan("auto")) == ""


@unit
def test_instructions_list_every_tool_and_the_format() -> None:
    text = tools.instructions(_plan("auto"))
    assert '{"tool_calls": [{"name": "<function name>", "arguments": {...}}]}' in text
    assert '"name": "get_weather"' in text and '"name": "get_time"' in text


@unit
@pytest.mark.parametrize(
    "written",
    [
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}',
        ' {"name": "get_weather", "arguments": {"city": "Oslo"}}\n',
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        '[{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]',
        '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
    ],
)
def test_the_shapes_models_write_calls_in(written: str) -> None:
    (call,) = tools.parse_calls(written, _plan("auto")) or []
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.id.startswith("call_")


@unit
@pytest.mark.parametrize(
    "written",
    [
        "It is sunny.",
        '{"name": "launch_rocket", "arguments": {}}',  # not a listed tool
        '{"tool_calls": [{"name": "get_weather", "arguments": [1]}]}',
        '{"tool_calls": []}',
        '{"city": "Oslo"}',
        '{"tool_calls": [{"name": "get_weather", "arguments": {"ci',  # cut short
    ],
)
def test_text_that_is_not_calls(written: str) -> None:
    assert tools.parse_calls(written, _plan("auto")) is None


@unit
def test_parallel_calls_keep_their_order() -> None:
    written = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "A"}},'
        ' {"name": "get_time", "arguments": {}}]}'
    )
    calls = tools.parse_calls(written, _plan()) or []
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2


def _entries(*texts: str) -> list[LogEntry]:
    return [LogEntry(i, t) for i, t in enumerate(texts)]


@unit
def test_auto_streams_plain_text_at_once() -> None:
    state = ChoiceState(_plan("auto"))
    assert state.feed(_entries("  ")) == []  # whitespace: undecided
    (out,) = state.feed(_entries("Sunny"))
    assert isinstance(out, Content) and out.text == "  Sunny"
    (more,) = state.feed(_entries(" today"))
    assert isinstance(more, Content) and more.text == " today"
    assert state.finish() == [] and state.finish_reason("stop") == "stop"


@unit
def test_auto_holds_what_may_be_calls_and_reads_them_at_the_end() -> None:
    state = ChoiceState(_plan("auto"))
    assert state.feed(_entries('{"name": "get_weather", ')) == []
    assert state.feed(_entries('"arguments": {"city": "Oslo"}}')) == []
    (out,) = state.finish()
    assert isinstance(out, Calls) and out.calls[0].name == "get_weather"
    assert state.finish_reason("stop") == "tool_calls"


@unit
def test_held_text_that_is_not_calls_is_not_lost() -> None:
    state = ChoiceState(_plan("required"))
    assert state.feed(_entries("{", '"oops": 1')) == []
    (out,) = state.finish()
    assert isinstance(out, Content) and out.text == '{"oops": 1'
    assert state.finish_reason("length") == "length"


@unit
def test_forced_calls_stream_as_they_are_written() -> None:
    """A stream sends a call's id and name once the name is complete, then
    its arguments in pieces; a brace inside a string does not end them."""
    written = (
        '{"tool_calls": [{"name": "get_wea',
        'ther", "arguments": {"city": "Pa}',
        'ris", "n": {"a": [1]}}}, {"name": "get_time", ',
        '"arguments": {}}]}',
    )
    state = ChoiceState(_plan("required"), streaming=True)
    outs = [o for piece in written for o in state.feed(_entries(piece))]
    assert isinstance(outs[0], CallStart)
    starts = [o for o in outs if isinstance(o, CallStart)]
    assert [(s.call, s.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    args: dict[int, str] = {}
    for o in outs:
        if isinstance(o, CallArgs):
            args[o.call] = args.get(o.call, "") + o.text
    assert json.loads(args[0]) == {"city": "Pa}ris", "n": {"a": [1]}} and args[1] == "{}"
    # The name came before any of its arguments.
    assert outs.index(starts[1]) < max(i for i, o in enumerate(outs) if isinstance(o, CallArgs))
    assert state.finish() == [] and state.finish_reason("stop") == "tool_calls"
    assert state.finish_reason("length") == "length"


@unit
def test_a_scanner_fed_one_character_at_a_time() -> None:
    value = 'a\\"}'  # an escaped quote, then a brace, inside a string
    text = json.dumps({"tool_calls": [{"name": "f", "arguments": {"s": value}}]})
    scanner = CallScanner()
    outs = [o for ch in text for o in scanner.feed(ch)]
    (start,) = [o for o in outs if isinstance(o, CallStart)]
    joined = "".join(o.text for o in outs if isinstance(o, CallArgs))
    assert start.name == "f" and json.loads(joined) == {"s": value}


@unit
def test_no_tools_pass_through() -> None:
    state = ChoiceState(None)
    (out,) = state.feed(_entries("{", "x"))
    assert isinstance(out, Content) and out.text == "{x"
    assert state.finish() == []


@unit
def test_history_in_the_generic_format_reads_back_as_the_same_calls() -> None:
    """What the worker renders for a template without tool support is the
    very format the gateway reads calls in."""
    from streamworker.tokenizer import generic_messages

    history = [
        Message("user", "weather?", name="ann"),
        Message(
            "assistant", "", tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Oslo"}')]
        ),
        Message("tool", "sunny", name="get_weather", tool_call_id="call_1"),
    ]
    plain = generic_messages(history)
    assert plain[0] == Message("user", "ann: weather?")
    assert plain[1].role == "assistant"
    (call,) = tools.parse_calls(plain[1].content, _plan("auto")) or []
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    assert plain[2].role == "user"
    assert "call_1" in plain[2].content and "sunny" in plain[2].content


# -- end to end ------------------------------------------------------------------------

engine_stack = stack_fixture()


class GetWeather(pydantic.BaseModel):
    """The weather in a city."""

    model_config = pydantic.ConfigDict(extra="forbid")
    city: str = pydantic.Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": WEATHER_PARAMS,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED = {
    "required": "required",
    "named": {"type": "function", "function": {"name": "get_weather"}},
}


def _streamed_calls(chunks: list[Any]) -> tuple[list[dict[str, str]], str | None]:
    """Join streamed tool-call deltas as a client does: by index, the id and
    name from the first, the arguments from all."""
    calls: dict[int, dict[str, str]] = {}
    reason = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reason = choice.finish_reason or reason
        for d in choice.delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            if d.id:
                assert not call["id"], "the id comes once, first"
                call["id"] = d.id
                call["name"] = d.function.name
            elif not call["id"]:
                raise AssertionError("arguments before the call's id and name")
            call["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], reason


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("choice", list(FORCED))
def test_forced_calls_are_valid(engine_stack, choice: str, stream: bool) -> None:
    args = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": FORCED[choice],
        "max_tokens": 80,
        "temperature": 0,
    }
    c = client(engine_stack)
    if stream:
        calls, reason = _streamed_calls(list(c.chat.completions.create(**args, stream=True)))
    else:
        out = c.chat.completions.create(**args)
        message = out.choices[0].message
        assert message.content is None
        calls = [
            {"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
            for t in message.tool_calls or []
        ]
        reason = out.choices[0].finish_reason
    assert reason == "tool_calls" and calls
    for call in calls:
        assert call["id"].startswith("call_") and call["name"] == "get_weather"
        GetWeather.model_validate_json(call["arguments"])


def test_auto_answers_with_text_or_valid_calls(engine_stack) -> None:
    out = client(engine_stack).chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL], max_tokens=24, temperature=0
    )
    choice = out.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for t in choice.message.tool_calls:
            GetWeather.model_validate_json(t.function.arguments)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("with_tools", [False, True], ids=["history-only", "with-tools"])
def test_a_tool_round_trip(engine_stack, with_tools: bool) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees."},
    ]
    extra = {"tools": [WEATHER_TOOL], "tool_choice": "none"} if with_tools else {}
    out = client(engine_stack).chat.completions.create(
        model=MODEL, messages=history, max_tokens=8, temperature=0, **extra
    )
    assert out.choices[0].message.content and not out.choices[0].message.tool_calls
    assert out.usage.prompt_tokens > 20


def test_pydantic_function_tools_round_trip(engine_stack) -> None:
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    out = client(engine_stack).chat.completions.parse(
        model=MODEL,
        messages=ASK,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        temperature=0,
    )
    (call,) = out.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)


@unit
def test_the_bundled_models_template_keeps_system_text_and_tool_turns() -> None:
    """Gemma's format has no system role: the tool instructions (a system
    message) must still reach the prompt, in the first user turn."""
    from streamworker.engines.model_file import resolve_model_path
    from streamworker.tokenizer import load_vocabulary

    render = load_vocabulary(str(resolve_model_path(""))).render
    prompt, _ = render(
        [
            Message("system", "TOOLS-HERE"),
            Message("user", "weather?"),
            Message("assistant", "", tool_calls=[ToolCall("call_1", "get_weather", "{}")]),
            Message("tool", "sunny", tool_call_id="call_1"),
        ]
    )
    assert prompt.index("<start_of_turn>user\nTOOLS-HERE\n\nweather?") >= 0
    assert '<start_of_turn>model\n{"tool_calls": [{"name": "get_weather"' in prompt
    assert "Result of tool call (call_1):\nsunny" in prompt
