"""The OpenAPI paths of the files, batches and webhooks endpoints
(docs/batches.md), merged into gateway/openapi.py's document."""

from __future__ import annotations

from typing import Any

_MEANINGS = {
    "400": "Invalid request (names the param)",
    "404": "No such file, batch or endpoint, or another key's",
    "413": "The file is over BATCH_MAX_FILE_BYTES",
}


def _op(summary: str, ok: str, *errors: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": ok},
            **{
                e: {
                    "description": _MEANINGS[e],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for e in errors
            },
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _json(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {
        "application/json": {
            "schema": {"type": "object", "required": required, "properties": props}
        }
    }


_STR = {"type": "string"}
_UPLOAD = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["file", "purpose"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"enum": ["batch"]},
            },
        }
    }
}
_BATCH = _json(
    ["input_file_id", "endpoint", "completion_window"],
    input_file_id=_STR,
    endpoint={"enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]},
    completion_window={"type": "string", "description": "24h (others with BATCH_CUSTOM_WINDOWS)"},
    metadata={"type": "object", "additionalProperties": _STR},
)
_ENDPOINT = _json(
    ["url"],
    url=_STR,
    events={
        "type": "array",
        "items": {"enum": ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]},
    },
)

BATCH_PATHS: dict[str, Any] = {
    "/v1/files": {
        "post": _op("Upload a batch input file", "The file object", "400", "413", body=_UPLOAD),
        "get": _op("The caller's files (after, limit, order, purpose)", "A list of file objects"),
    },
    "/v1/files/{file_id}": {
        "parameters": [_path("file_id")],
        "get": _op("One file", "The file object", "404"),
        "delete": _op("Delete a file", "{id, object, deleted}", "404"),
    },
    "/v1/files/{file_id}/content": {
        "parameters": [_path("file_id")],
        "get": _op("A file's bytes (JSONL)", "The bytes", "404"),
    },
    "/v1/batches": {
        "post": _op("Create a batch", "The batch (validating)", "400", "404", body=_BATCH),
        "get": _op("The caller's batches, newest first (after, limit)", "A list of batches"),
    },
    "/v1/batches/{batch_id}": {
        "parameters": [_path("batch_id")],
        "get": _op("One batch", "The batch", "404"),
    },
    "/v1/batches/{batch_id}/cancel": {
        "parameters": [_path("batch_id")],
        "post": _op("Cancel a batch", "The batch (cancelling)", "400", "404"),
    },
    "/v1/webhooks": {
        "post": _op(
            "Register a webhook endpoint",
            "The endpoint, with its secret (shown once)",
            "400",
            body=_ENDPOINT,
        ),
        "get": _op("The caller's endpoints (no secrets)", "A list of endpoints"),
    },
    "/v1/webhooks/{endpoint_id}": {
        "parameters": [_path("endpoint_id")],
        "delete": _op("Delete an endpoint", "{id, object, deleted}", "404"),
    },
}
