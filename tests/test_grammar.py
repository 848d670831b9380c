"""JSON schemas -> grammars: what the converter cannot enforce is refused,
never silently dropped."""

from __future__ import annotations

import pytest

from streamworker.grammar import UNENFORCED, SchemaError, from_schema

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("keyword", sorted(UNENFORCED))
def test_an_unenforced_keyword_is_refused_wherever_it_sits(keyword: str) -> None:
    nested = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"anyOf": [{keyword: 1}]}}},
    }
    with pytest.raises(SchemaError, match=keyword):
        from_schema(nested)


def test_property_names_that_spell_keywords_are_fine() -> None:
    schema = {
        "type": "object",
        "properties": {"maximum": {"type": "integer"}, "not": {"type": "string"}},
        "required": ["maximum", "not"],
    }
    assert "root ::=" in from_schema(schema)


def test_enforced_constraints_still_compile() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[a-z]+$"},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    assert "root ::=" in from_schema(schema)
