"""The OpenAPI document for the gateway's endpoints, served at /openapi.json
in development only (ENVIRONMENT=production does not route it). There is no
interactive UI, so nothing loads scripts from a CDN."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from aiohttp import web

from gateway.openapi_batches import BATCH_PATHS
from gateway.openapi_retrieval import RETRIEVAL_PATHS
from gateway.openapi_schemas import CHAT, LEGACY


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_ERRORS = {
    "400": _error("Invalid request (bad JSON, wrong types, limits, context_length_exceeded)"),
    "401": _error("Missing or incorrect API key (invalid_api_key)"),
    "404": _error("Unknown model or path"),
    "413": _error("Body larger than MAX_BODY_BYTES"),
    "429": _error("Rate limit or queue full; see Retry-After and x-ratelimit-* headers"),
    "503": _error("No live worker for the model, or Redis unavailable; see Retry-After"),
}

_JOB_HEADERS = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "schema": {"type": "string"},
        "description": "A retried POST with the same key returns the first job",
    },
    {
        "name": "X-Request-ID",
        "in": "header",
        "schema": {"type": "string", "maxLength": 128},
        "description": "Echoed back and logged; generated when absent or malformed",
    },
]


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _completion_op(summary: str, body: dict[str, Any], result: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": _JOB_HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": f"A {result}, or an SSE stream of chunks when stream=true",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **_ERRORS,
        },
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "streamworker gateway",
        "version": version("streamworker"),
        "description": "OpenAI-compatible completions served from a Redis Streams queue.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/chat/completions": {
            "post": _completion_op(
                "Chat completion",
                {"type": "object", "required": ["model", "messages"], "properties": CHAT},
                "chat.completion",
            )
        },
        "/v1/completions": {
            "post": _completion_op(
                "Text completion (legacy)",
                {"type": "object", "required": ["model", "prompt"], "properties": LEGACY},
                "text_completion",
            )
        },
        "/v1/jobs": {
            "post": {
                **_completion_op(
                    "Submit a chat job and return at once (202)",
                    {"type": "object", "required": ["model", "messages"], "properties": CHAT},
                    "job",
                ),
                "responses": {
                    "202": {"description": "The job, queued; Location names it"},
                    "200": {"description": "A retried Idempotency-Key: the first job"},
                    **_ERRORS,
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {
                "summary": "A job's status, attempts, result and usage",
                "responses": {"200": {"description": "The job"}, "404": _ERRORS["404"]},
            },
            "delete": {
                "summary": "Cancel a job",
                "responses": {
                    "200": {"description": "The job, cancelled or cancelling"},
                    "404": _ERRORS["404"],
                },
            },
        },
        "/v1/jobs/{job_id}/events": {
            "get": {
                "summary": "The job's token and status events as SSE; resume with Last-Event-ID",
                "parameters": [
                    _JOB_ID,
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "404": _ERRORS["404"],
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "Models with a live worker",
                "responses": {"200": {"description": "A model list"}, "401": _ERRORS["401"]},
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "One model with a live worker",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "A model card"}, "404": _ERRORS["404"]},
            }
        },
        "/tokenize": {
            "post": {
                "summary": "Text -> token ids with the model's vocabulary (llama-server's)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["content"],
                                "properties": {
                                    "content": {"type": "string"},
                                    "model": {"type": "string"},
                                    "add_special": {"type": "boolean", "default": False},
                                    "parse_special": {"type": "boolean", "default": True},
                                    "with_pieces": {"type": "boolean", "default": False},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "{tokens}"}, **_ERRORS},
            }
        },
        "/detokenize": {
            "post": {
                "summary": "Token ids -> text with the model's vocabulary (llama-server's)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["tokens"],
                                "properties": {
                                    "tokens": {"type": "array", "items": {"type": "integer"}},
                                    "model": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "{content}"}, **_ERRORS},
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness (always open, no dependencies)",
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: Redis and a live worker",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition"}},
            }
        },
    },
}
# Embeddings, collections, documents and search (docs/retrieval.md).
DOCUMENT["paths"].update(RETRIEVAL_PATHS)
DOCUMENT["paths"].update(BATCH_PATHS)


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
