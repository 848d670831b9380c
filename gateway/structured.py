"""Structured output: a request's `response_format` -> the grammar that the
worker's sampler enforces, so the answer parses (and validates against the
schema) every time, whatever the model would have written.

The grammar is compiled here, before the job is queued (streamworker/grammar.py,
imported at the first request that needs it): a schema it cannot read is a
400 naming `response_format`, never a failed job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.openai_types import ResponseFormat

FORMATS = ("text", "json_object", "json_schema")


def _bad(message: str, code: str = "invalid_value") -> BadRequest:
    return BadRequest(message, param="response_format", code=code)


def grammar(fmt: ResponseFormat | None) -> str:
    """The GBNF grammar the answer must match; "" for free text."""
    if fmt is None or fmt.type == "text":
        return ""
    if fmt.type not in FORMATS:
        raise _bad(f"Unknown response_format type '{fmt.type}'; expected one of {FORMATS}.")
    from streamworker.grammar import SchemaError, from_schema, json_object

    if fmt.type == "json_object":
        return json_object()
    spec = fmt.json_schema
    if spec is None:
        raise _bad("response_format json_schema needs a 'json_schema' object.")
    if not spec.name:
        raise _bad("response_format json_schema needs a 'name'.")
    if spec.schema_ is None:
        return json_object()  # no schema: any JSON object, as OpenAI takes it
    try:
        return from_schema(spec.schema_)
    except SchemaError as exc:
        raise _bad(f"response_format json_schema is not a usable JSON schema: {exc}") from None
