"""The OpenAPI paths of the retrieval endpoints (docs/retrieval.md), merged
into gateway/openapi.py's document. Paths use the default API_PREFIX."""

from __future__ import annotations

from typing import Any

PREFIX = "/api/v1"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _op(summary: str, ok: str, *errors: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    meanings = {
        "400": "Invalid request (empty text, wrong types, bad filter)",
        "403": "A shared collection of another key is read-only (permission_denied)",
        "404": "No such collection or document, or another key's (collection_not_found)",
        "409": "The name is taken, or the collection's dimension differs (dimension_mismatch)",
        "413": "The document is over MAX_DOCUMENT_CHARS",
        "429": "Search rate limit or queue full; see Retry-After",
    }
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": ok}, **{e: _error(meanings[e]) for e in errors}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_STR = {"type": "string"}
_META = {"type": "object"}
_DOC = _obj(
    ["text"], text=_STR, id=_STR, metadata=_META, format={"enum": ["auto", "text", "markdown"]}
)
_NAME = {"name": "name", "in": "path", "required": True, "schema": _STR}
_DOC_ID = {"name": "doc_id", "in": "path", "required": True, "schema": _STR}

RETRIEVAL_PATHS: dict[str, Any] = {
    "/v1/embeddings": {
        "post": _op(
            "Embeddings, computed by the workers (OpenAI-compatible)",
            "A list of embeddings with usage",
            "400",
            "404",
            "429",
            body=_obj(
                ["model", "input"],
                model=_STR,
                input={"description": "a string, strings, token ids, or lists of token ids"},
                encoding_format={"enum": ["float", "base64"]},
                dimensions={"type": "integer"},
                user=_STR,
            ),
        )
    },
    f"{PREFIX}/collections": {
        "post": _op(
            "Create a collection (201)",
            "The collection",
            "400",
            "409",
            body=_obj(["name"], name=_STR, shared={"type": "boolean"}),
        ),
        "get": _op("The caller's collections and shared ones", "A list"),
    },
    f"{PREFIX}/collections/{{name}}": {
        "parameters": [_NAME],
        "get": _op("Points, dimension, model, owner, shared", "The collection", "404"),
        "delete": _op("Delete a collection (owner only)", "Deleted", "403", "404"),
    },
    f"{PREFIX}/collections/{{name}}/documents": {
        "parameters": [_NAME],
        "post": _op(
            "Add a document (201); an id is made if none",
            "Its id and chunks",
            "400",
            "403",
            "404",
            "413",
            body=_DOC,
        ),
        "get": _op("One row per document; ?limit=&offset=", "A page of documents", "404"),
    },
    f"{PREFIX}/collections/{{name}}/documents/{{doc_id}}": {
        "parameters": [_NAME, _DOC_ID],
        "put": _op(
            "Write a document, replacing its chunks",
            "Its id and chunks",
            "400",
            "403",
            "404",
            "413",
            body=_DOC,
        ),
        "delete": _op("Delete a document's chunks", "Deleted", "403", "404"),
    },
    f"{PREFIX}/search": {
        "post": _op(
            "Nearest chunks: dense or hybrid (dense + BM25-style, fused by rank)",
            "Chunks with scores, document ids, metadata",
            "400",
            "404",
            "429",
            body=_obj(
                ["collection", "query"],
                collection=_STR,
                query=_STR,
                top_k={"type": "integer", "minimum": 1},
                filter=_META,
                mode={"enum": ["dense", "hybrid"]},
            ),
        )
    },
}
