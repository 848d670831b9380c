"""The Qdrant connection for retrieval: embedded local mode by default, a
real server (API key, HTTPS, gRPC) in production, from QdrantSettings.

Shared by the gateway (which owns the store: it is the one process that
opens it) and the operator CLI (`python -m streamworker qdrant` checks it:
mode, address, collections, and the production checklist of the RAG
deployment guide). It imports no worker code and loads qdrant-client only
when a connection is made, so the settings cost nothing to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from streamworker.protocol.settings import PositiveFloat

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient


class QdrantSettings(msgspec.Struct, kw_only=True):
    """The retrieval store (the RAG guide's variables). No QDRANT_HOST (or
    QDRANT_URL) means Qdrant's embedded local mode: no server, data in
    QDRANT_PATH (or memory)."""

    qdrant_host: str = ""
    # A full address (https://host:6333) instead of host, port and scheme.
    qdrant_url: str = ""
    qdrant_path: str = ""
    qdrant_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6333
    qdrant_grpc_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6334
    qdrant_api_key: str = ""
    qdrant_prefer_grpc: bool = False
    qdrant_https: bool = False
    qdrant_timeout: PositiveFloat = 60.0

    @property
    def embedded(self) -> bool:
        return not (self.qdrant_host or self.qdrant_url)

    def __repr__(self) -> str:
        key = "***" if self.qdrant_api_key else ""
        return (
            f"QdrantSettings(host={self.qdrant_host!r}, url={self.qdrant_url!r}, "
            f"path={self.qdrant_path!r}, port={self.qdrant_port}, https={self.qdrant_https}, "
            f"api_key={key!r})"
        )


class QdrantStatus(msgspec.Struct, kw_only=True):
    mode: str  # "embedded" | "server"
    address: str
    collections: list[str]
    problems: list[str]  # production checklist lines not met


def single_process_problem(settings: QdrantSettings, processes: int) -> str | None:
    """Why `processes` gateway processes cannot share this store, or None.
    qdrant-client locks an embedded path to the one process that opened it,
    so a multi-process gateway needs a Qdrant server."""
    if processes > 1 and settings.embedded:
        return (
            f"{processes} gateway processes cannot share embedded Qdrant "
            f"({settings.qdrant_path or ':memory:'} is locked to one process); "
            "set QDRANT_HOST or QDRANT_URL to a Qdrant server, or run one gateway process"
        )
    return None


def connect(settings: QdrantSettings, *, check_version: bool = True) -> AsyncQdrantClient:
    from qdrant_client import AsyncQdrantClient

    if settings.embedded:
        # Embedded local mode: one process owns the path at a time.
        return AsyncQdrantClient(
            location=None if settings.qdrant_path else ":memory:", path=settings.qdrant_path or None
        )
    if settings.qdrant_url:
        return AsyncQdrantClient(
            url=settings.qdrant_url,
            grpc_port=settings.qdrant_grpc_port,
            prefer_grpc=settings.qdrant_prefer_grpc,
            api_key=settings.qdrant_api_key or None,
            timeout=int(settings.qdrant_timeout),
            check_compatibility=check_version,
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


def _https(settings: QdrantSettings) -> bool:
    if settings.qdrant_url:
        return settings.qdrant_url.startswith("https://")
    return settings.qdrant_https


def checklist(settings: QdrantSettings) -> list[str]:
    """The deployment guide's production lines that this configuration misses."""
    if settings.embedded:
        return []
    problems = []
    if not settings.qdrant_api_key:
        problems.append("QDRANT_API_KEY is not set for a remote Qdrant")
    if not _https(settings):
        problems.append("QDRANT_HTTPS is not true for a remote Qdrant")
    return problems


def address(settings: QdrantSettings) -> str:
    if settings.embedded:
        return settings.qdrant_path or ":memory:"
    if settings.qdrant_url:
        return settings.qdrant_url
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
        mode="embedded" if settings.embedded else "server",
        address=address(settings),
        collections=names,
        problems=checklist(settings),
    )
