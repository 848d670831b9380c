"""JSON schemas -> GBNF grammars, the form llama.cpp's sampler constrains to.

The gateway compiles a request's `response_format` (and the forced tool call
of `tool_choice`) here, once, before the job is queued: a schema the
converter cannot handle is the client's 400, never a failed job, and the
worker receives a grammar it only has to load. The converter is
llama-cpp-python's port of llama.cpp's own `json_schema_to_grammar`, so the
grammar matches what llama-server would build for the same schema.

Importing this module loads llama.cpp's library: the gateway imports it
lazily, at the first request that needs a grammar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llama_cpp import llama_grammar

# The converter's string character admits raw control characters, which
# JSON (and every strict parser) refuses inside strings; llama.cpp's own
# converter has since excluded them, and so do we.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


class SchemaError(ValueError):
    """The schema is not one the converter can turn into a grammar."""


# Keywords the converter reads past without enforcing them: a grammar built
# from a schema holding one would let through output the schema forbids
# (`maximum: 120` admits 7990), so such a schema is refused, not half-honoured.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "contains",
        "minContains",
        "maxContains",
        "not",
        "if",
        "then",
        "else",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
# Keywords whose value maps names to subschemas, or is a list of subschemas.
_NAMED_SUBSCHEMAS = ("properties", "$defs", "definitions")
_LISTED_SUBSCHEMAS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _check_enforceable(schema: object) -> None:
    if not isinstance(schema, Mapping):
        return
    for key, value in schema.items():
        if key in UNENFORCED:
            raise SchemaError(
                f"'{key}' cannot be enforced by the output grammar; "
                "remove it, or check it on the answer yourself"
            )
        if key in _NAMED_SUBSCHEMAS and isinstance(value, Mapping):
            for sub in value.values():
                _check_enforceable(sub)
        elif key in _LISTED_SUBSCHEMAS and isinstance(value, list):
            for sub in value:
                _check_enforceable(sub)
        elif key in ("items", "additionalProperties"):
            _check_enforceable(value)


def from_schema(schema: Mapping[str, Any]) -> str:
    """The GBNF grammar whose strings are exactly the JSON texts valid
    against `schema` (as far as llama.cpp's converter reads it)."""
    if not isinstance(schema, Mapping):
        raise SchemaError("a JSON schema must be an object")
    try:
        _check_enforceable(schema)
    except RecursionError:
        raise SchemaError("the schema nests too deeply") from None
    try:
        text = json.dumps(schema)
        # The converter checks with assert and fails on odd input with
        # whatever error comes up first; any of them means "not convertible".
        grammar = llama_grammar.json_schema_to_gbnf(text)
    except RecursionError:
        raise SchemaError("the schema nests too deeply") from None
    except Exception as exc:
        raise SchemaError(_reason(exc)) from None
    if "root ::=" not in grammar:
        raise SchemaError("the schema produced no grammar")
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def json_object() -> str:
    """Any JSON object (OpenAI's `json_object` mode)."""
    return from_schema({"type": "object"})


def _reason(exc: Exception) -> str:
    """A short, safe reason: the converter's own message when it wrote one."""
    message = str(exc).strip()
    if isinstance(exc, AssertionError | NotImplementedError | ValueError) and message:
        return message[:200]
    return "the converter cannot read this schema"
