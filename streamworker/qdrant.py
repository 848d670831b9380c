"""The Qdrant connection for retrieval: embedded local mode by default, a
real server (API key, HTTPS, gRPC) in production, from QdrantSettings.

`python -m streamworker qdrant` checks it: mode, address, collections, and
the production checklist of the RAG deployment guide (QDRANT_API_KEY set and
QDRANT_HTTPS=true for a remote server).
"""

from __future__ import annotations

import msgspec
from qdrant_client import AsyncQdrantClient

from streamworker.settings import QdrantSettings


class QdrantStatus(msgspec.Struct, kw_only=True):
    mode: str  # "embedded" | "server"
    address: str
    collections: list[str]
    problems: list[str]  # production checklist lines not met


def connect(settings: QdrantSettings, *, check_version: bool = True) -> AsyncQdrantClient:
    if not settings.qdrant_host:
        # Embedded local mode: one process owns the path at a time.
        return AsyncQdrantClient(
            location=None if settings.qdrant_path else ":memory:", path=settings.qdrant_path or None
        )
    return AsyncQdrantClient(
        host=settings.qdrant_host,
        port=settings.qdrant_port,
        grpc_port=settings.qdrant_grpc_port,
        prefer_grpc=settings.qdrant_prefer_grpc,
        https=settings.qdrant_https,
        api_key=settings.qdrant_api_key or None,
        timeout=int(settings.qdrant_timeout),
        # The client asks the server's version in a thread at construction.
        check_compatibility=check_version,
    )


def checklist(settings: QdrantSettings) -> list[str]:
    """The deployment guide's production lines that this configuration misses."""
    if not settings.qdrant_host:
        return []
    problems = []
    if not settings.qdrant_api_key:
        problems.append("QDRANT_API_KEY is not set for a remote Qdrant")
    if not settings.qdrant_https:
        problems.append("QDRANT_HTTPS is not true for a remote Qdrant")
    return problems


def address(settings: QdrantSettings) -> str:
    if not settings.qdrant_host:
        return settings.qdrant_path or ":memory:"
    scheme = "https" if settings.qdrant_https else "http"
    return f"{scheme}://{settings.qdrant_host}:{settings.qdrant_port}"


async def status(settings: QdrantSettings, client: AsyncQdrantClient | None = None) -> QdrantStatus:
    """Connect (or use `client`) and list collections; raises if unreachable."""
    own = client is None
    client = client or connect(settings)
    try:
        names = sorted(c.name for c in (await client.get_collections()).collections)
    finally:
        if own:
            await client.close()
    return QdrantStatus(
        mode="server" if settings.qdrant_host else "embedded",
        address=address(settings),
        collections=names,
        problems=checklist(settings),
    )
