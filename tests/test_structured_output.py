"""Structured output: `response_format` json_object and json_schema are held
by a grammar, so even the bundled 270M base model answers with JSON that
parses and validates, streamed and not, on both engines; `parse()` with a
pydantic model returns the parsed object. Unit: schemas -> grammars, and
the 400s that name `response_format`."""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pydantic
import pytest

from gateway.errors import BadRequest
from gateway.openai_types import JsonSchemaFormat, ResponseFormat
from gateway.structured import grammar
from streamworker import grammar as gbnf
from tests.model_stacks import MODEL, client, stack_fixture

unit = pytest.mark.unit
engine_stack = stack_fixture()


class City(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=24)
    country: Literal["France", "Japan", "Peru"]
    population: int


CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "enum": ["France", "Japan", "Peru"]},
        "population": {"type": "integer"},
    },
    "required": ["name", "country", "population"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe one large city as JSON."}]
# Free JSON (json_object) has no bound a grammar can enforce: this prompt is
# one the base model closes well inside max_tokens.
ASK_PERSON = [
    {"role": "user", "content": 'Give a JSON object with the keys "name" and "age" of one person.'}
]


# -- unit ------------------------------------------------------------------------------


@unit
def test_text_is_free_and_json_modes_get_grammars() -> None:
    assert grammar(None) == "" and grammar(ResponseFormat("text")) == ""
    assert "root ::= object" in grammar(ResponseFormat("json_object"))
    spec = JsonSchemaFormat("city", schema_=CITY_SCHEMA, strict=True)
    city = grammar(ResponseFormat("json_schema", spec))
    assert "root ::=" in city and '\\"France\\"' in city
    # No schema: any JSON object, as OpenAI takes it.
    assert grammar(ResponseFormat("json_schema", JsonSchemaFormat("x"))) == gbnf.json_object()


@unit
def test_strings_never_hold_raw_control_characters() -> None:
    """A strict JSON parser refuses a raw newline inside a string."""
    g = gbnf.from_schema({"type": "object", "properties": {"s": {"type": "string"}}})
    assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F]' in g


@unit
@pytest.mark.parametrize(
    "fmt",
    [
        ResponseFormat("yaml"),
        ResponseFormat("json_schema"),
        ResponseFormat("json_schema", JsonSchemaFormat("")),
        ResponseFormat("json_schema", JsonSchemaFormat("x", schema_={"type": "tuple"})),
        ResponseFormat("json_schema", JsonSchemaFormat("x", schema_={"$ref": "#/$defs/gone"})),
        ResponseFormat(
            "json_schema", JsonSchemaFormat("x", schema_={"type": "string", "pattern": "a("})
        ),
    ],
)
def test_bad_formats_are_400s_naming_response_format(fmt: ResponseFormat) -> None:
    with pytest.raises(BadRequest) as info:
        grammar(fmt)
    assert info.value.param == "response_format" and info.value.status == 400


# -- end to end -------------------------------------------------------------------------


def _content(gateway: Any, stream: bool, **kw: Any) -> str:
    c = client(gateway)
    args = {"model": MODEL, "messages": ASK, "max_tokens": 96, "temperature": 0, **kw}
    if not stream:
        out = c.chat.completions.create(**args)
        return out.choices[0].message.content or ""
    chunks = list(c.chat.completions.create(**args, stream=True))
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_json_object_parses(engine_stack, stream: bool) -> None:
    text = _content(
        engine_stack, stream, messages=ASK_PERSON, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_json_schema_validates(engine_stack, stream: bool) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}
    text = _content(engine_stack, stream, response_format=fmt, temperature=0.8, seed=11)
    City.model_validate_json(text)


def test_parse_returns_the_pydantic_object(engine_stack) -> None:
    out = client(engine_stack).chat.completions.parse(
        model=MODEL, messages=ASK, response_format=City, max_tokens=96, temperature=0
    )
    city = out.choices[0].message.parsed
    assert isinstance(city, City), out.choices[0].message.content


def test_streamed_parse_helper(engine_stack) -> None:
    with client(engine_stack).chat.completions.stream(
        model=MODEL, messages=ASK, response_format=City, max_tokens=96, temperature=0
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, City)


def test_an_unknown_schema_type_is_a_400(engine_stack) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "tuple"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client(engine_stack).chat.completions.create(model=MODEL, messages=ASK, response_format=fmt)
    assert info.value.body["param"] == "response_format"
