"""The request bodies of the completion endpoints as JSON schemas, for the
OpenAPI document (gateway/openapi.py). Every field the request structs read
is listed (tests/test_parsing.py checks), with the bounds gateway/parsing.py
enforces."""

from __future__ import annotations

from typing import Any

# Fields the engines cannot honour take only their no-op value; any other
# value is a 400 naming the field (gateway/parsing.py).
_NO_OP = "Accepted only as its no-op value; anything else is a 400"

_TOOL_CALL = {
    "type": "object",
    "required": ["id", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {
            "type": "string",
            "enum": ["system", "developer", "user", "assistant", "tool"],
        },
        "content": {
            "description": "Required except on an assistant message with tool_calls",
            "oneOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ],
        },
        "name": {"type": "string", "description": "Written before the content in the prompt"},
        "tool_calls": {"type": "array", "items": _TOOL_CALL, "description": "Assistant only"},
        "tool_call_id": {"type": "string", "description": "Tool only, and required there"},
    },
}

_SAMPLING = {
    "model": {"type": "string"},
    "max_tokens": {
        "type": "integer",
        "minimum": 1,
        "description": "Capped by MAX_TOKENS_LIMIT; default DEFAULT_MAX_TOKENS",
    },
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "stop": {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "At most MAX_STOP_SEQUENCES (4); never part of the output",
    },
    "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    "stream": {"type": "boolean"},
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": {"type": "boolean"}},
        "description": "Only with stream=true",
    },
    "n": {"type": "integer", "minimum": 1, "description": "At most MAX_N (default 8)"},
    "user": {"type": "string", "description": "Accepted; not used"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "logit_bias": {
        "type": "object",
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "description": "Token id (as a string) -> bias added to its logit",
    },
    "timeout": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Extension: seconds the job may wait and run",
    },
    "service_tier": {
        "type": "string",
        "enum": ["auto", "priority", "default", "flex"],
        "description": "The scheduling tier; auto: the API key's default tier",
    },
    "top_k": {"type": "integer", "minimum": 0, "description": "Extension (llama-server); 0: off"},
    "min_p": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "Extension (llama-server); 0: off",
    },
    "repeat_penalty": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 10,
        "description": "Extension (llama-server); 1: off",
    },
}

_FUNCTION = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": {"type": "string"},
        "parameters": {"type": "object", "description": "A JSON schema"},
        "strict": {"type": "boolean"},
    },
}

CHAT: dict[str, Any] = {
    **_SAMPLING,
    "messages": {"type": "array", "items": _MESSAGE},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "response_format": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "schema": {"type": "object"},
                    "description": {"type": "string"},
                    "strict": {"type": "boolean"},
                },
            },
        },
        "description": "JSON modes are enforced by a grammar compiled from the schema",
    },
    "tools": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["type", "function"],
            "properties": {"type": {"const": "function"}, "function": _FUNCTION},
        },
    },
    "tool_choice": {
        "oneOf": [
            {"enum": ["none", "auto", "required"]},
            {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                },
            },
        ],
        "description": "required and a named function are grammar-constrained",
    },
    "parallel_tool_calls": {"type": "boolean"},
    "functions": {"type": "array", "maxItems": 0, "description": _NO_OP + "; send tools"},
    "function_call": {"const": "none", "description": _NO_OP + "; send tool_choice"},
    "logprobs": {"type": "boolean"},
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
}

_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}

LEGACY: dict[str, Any] = {
    **_SAMPLING,
    "prompt": {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            _TOKEN_IDS,
            {"type": "array", "items": _TOKEN_IDS, "minItems": 1},
        ],
        "description": "Raw, no chat template; a list is a batch (one job per prompt, "
        "at most MAX_BATCH_PROMPTS)",
    },
    "best_of": {"type": "integer", "const": 1, "description": _NO_OP},
    "echo": {"type": "boolean"},
    "suffix": {"type": "string", "maxLength": 0, "description": _NO_OP},
    "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
}
