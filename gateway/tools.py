"""Tool calling: a request's `tools` and `tool_choice` -> what the model is
told, what it may write, and how its answer is read back.

The model is told about the tools in a system message, in the generic
format (docs/api.md): to call, it answers with only
`{"tool_calls": [{"name": ..., "arguments": {...}}]}`. With `tool_choice`
`required` or a named function the answer is forced into that shape by a
grammar compiled from the tools' parameter schemas, so even a base model
makes a valid call. With `auto` the model decides, and what it wrote is read
as calls when it is one of the shapes models use for them (the generic one,
a bare `{"name", "arguments"}` object, `<tool_call>` blocks); otherwise it is
the answer's text.

Pure except for the lazy grammar import: unit-tested without a server.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.openai_types import NamedToolChoice, Tool

TOOL_CALLS_KEY = "tool_calls"  # the same key streamworker/tokenizer.py renders history with
# Calls in one forced parallel answer: at most one per listed tool, and
# never more than this. A base model under the grammar would otherwise keep
# adding calls until max_tokens cut the JSON short.
MAX_PARALLEL_CALLS = 4
# Function names as OpenAI allows them.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The tools of one request and how the answer may use them."""

    functions: tuple[Function, ...]
    mode: str  # auto | required | function (a named one)
    forced: str = ""  # the named function, mode "function"
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.functions)

    @property
    def constrained(self) -> bool:
        """Whether the answer is forced to be calls (a grammar)."""
        return self.mode != "auto"


@dataclass(frozen=True, slots=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _functions(tools: list[Tool]) -> tuple[Function, ...]:
    out: list[Function] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if tool.type != "function":
            raise BadRequest(
                f"Tool type '{tool.type}' is not supported; only 'function'.",
                param=f"{param}.type",
                code="invalid_value",
            )
        fn = tool.function
        if not _NAME.match(fn.name):
            raise BadRequest(
                "A function name is 1-64 letters, digits, '_' or '-'.",
                param=f"{param}.function.name",
            )
        if any(f.name == fn.name for f in out):
            raise BadRequest(f"Two tools are named '{fn.name}'.", param=f"{param}.function.name")
        parameters = fn.parameters if fn.parameters is not None else {"type": "object"}
        out.append(Function(fn.name, fn.description or "", parameters))
    return tuple(out)


def plan(
    tools: list[Tool] | None,
    choice: str | NamedToolChoice | None,
    parallel: bool | None,
) -> ToolPlan | None:
    """The request's tool plan, None when no tool may be called; 400s name
    the bad param."""
    if not tools:
        if choice not in (None, "none"):
            raise BadRequest(
                "tool_choice needs tools; send tools or leave tool_choice out.",
                param="tool_choice",
            )
        return None
    functions = _functions(tools)
    parallel = parallel is not False
    if choice is None or choice == "auto":
        return ToolPlan(functions, "auto", parallel=parallel)
    if choice == "none":
        return None
    if choice == "required":
        return ToolPlan(functions, "required", parallel=parallel)
    if isinstance(choice, str):
        raise BadRequest(
            f"Unknown tool_choice '{choice}'; expected none, auto, required or a function.",
            param="tool_choice",
            code="invalid_value",
        )
    if choice.type != "function" or choice.function.name not in {f.name for f in functions}:
        raise BadRequest(
            "tool_choice must name a function listed in tools.",
            param="tool_choice",
            code="invalid_value",
        )
    return ToolPlan(functions, "function", forced=choice.function.name, parallel=False)


def instructions(tools: ToolPlan) -> str:
    """The system message that tells the model about the tools."""
    listed = "\n".join(
        json.dumps(
            {"name": f.name, "description": f.description, "parameters": f.parameters},
            ensure_ascii=False,
        )
        for f in tools.functions
    )
    if tools.mode == "function":
        how = f"Call the function {tools.forced}."
    elif tools.mode == "required":
        how = "Call one or more of these functions."
    else:
        how = "Answer directly, or call one or more of these functions."
    return (
        f"You can call functions. {how} To call, answer with only this JSON:\n"
        f'{{"{TOOL_CALLS_KEY}": [{{"name": "<function name>", "arguments": {{...}}}}]}}\n'
        f"Functions:\n{listed}"
    )


def calls_schema(tools: ToolPlan) -> dict[str, Any]:
    """The JSON schema of an answer that is only calls (for the grammar)."""
    allowed = [f for f in tools.functions if tools.mode != "function" or f.name == tools.forced]
    items = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": f.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in allowed
    ]
    return {
        "type": "object",
        "properties": {
            TOOL_CALLS_KEY: {
                "type": "array",
                "items": items[0] if len(items) == 1 else {"anyOf": items},
                "minItems": 1,
                "maxItems": min(len(allowed), MAX_PARALLEL_CALLS) if tools.parallel else 1,
            }
        },
        "required": [TOOL_CALLS_KEY],
        "additionalProperties": False,
    }


def grammar(tools: ToolPlan) -> str:
    """The grammar that forces calls, or "" when the model may answer freely."""
    if not tools.constrained:
        return ""
    from streamworker.grammar import SchemaError, from_schema

    try:
        return from_schema(calls_schema(tools))
    except SchemaError as exc:
        raise BadRequest(
            f"A tool's parameters are not a usable JSON schema: {exc}", param="tools"
        ) from None


# -- reading the answer ---------------------------------------------------------------


def _call(obj: object, names: frozenset[str]) -> Call | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if name not in names or not isinstance(args, dict):
        return None
    return Call(new_call_id(), name, json.dumps(args, ensure_ascii=False))


def _calls_in(obj: object, names: frozenset[str]) -> list[Call] | None:
    if isinstance(obj, dict) and TOOL_CALLS_KEY in obj:
        obj = obj[TOOL_CALLS_KEY]
    listed = obj if isinstance(obj, list) else [obj]
    calls = [_call(o, names) for o in listed]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def parse_calls(text: str, tools: ToolPlan) -> list[Call] | None:
    """The calls `text` makes, or None when it is not (only) calls."""
    body = text.strip()
    if fenced := _FENCE.match(body):
        body = fenced.group(1)
    if body.startswith("<tool_call>"):
        found: list[Call] = []
        for block in _TAGGED.findall(body):
            calls = _calls_in(_json(block), tools.names)
            if calls is None:
                return None
            found.extend(calls)
        return found or None
    return _calls_in(_json(body), tools.names)


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def may_be_calls(text: str) -> bool | None:
    """Whether streamed text so far may be the start of calls: True, False,
    or None while only whitespace has come (undecided)."""
    body = text.lstrip()
    if not body:
        return None
    if body[0] in "{[":
        return True
    marks = ("<tool_call>", "```")
    if any(body.startswith(m) or m.startswith(body) for m in marks):
        return True
    return False
