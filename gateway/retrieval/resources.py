"""The retrieval resources of one gateway process: the Qdrant client (this
process owns the store), the vector store and the retrieval service, under
one typed AppKey, opened and closed by a cleanup context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.errors import ServiceUnavailable
from gateway.retrieval.service import Retrieval
from gateway.retrieval.settings import RetrievalSettings
from gateway.retrieval.store import VectorStore
from streamworker import qdrant
from streamworker.qdrant import QdrantSettings

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient

log = logging.getLogger("gateway.retrieval")


@dataclass(eq=False)
class RetrievalState:
    settings: RetrievalSettings
    qdrant_settings: QdrantSettings
    service: Retrieval | None = None  # None until the store is open

    @property
    def store(self) -> VectorStore:
        return self.ready().store

    def ready(self) -> Retrieval:
        if self.service is None:
            raise ServiceUnavailable("The retrieval store is not open.")
        return self.service


RETRIEVAL: web.AppKey[RetrievalState] = web.AppKey("retrieval", RetrievalState)


def retrieval_of(app: web.Application) -> RetrievalState:
    return app[RETRIEVAL]


async def _open(settings: QdrantSettings) -> AsyncQdrantClient:
    """The store's client. A server that does not answer at start is one
    ERROR line (where, and why), not qdrant-client's warning: chat keeps
    serving, and retrieval works once the server answers."""
    if settings.embedded:
        return qdrant.connect(settings)
    probe = qdrant.connect(settings, check_version=False)
    try:
        async with asyncio.timeout(settings.qdrant_timeout):
            await probe.get_collections()
    except Exception as exc:  # any transport error: the line says which
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error(
            "retrieval store unreachable at %s: %s: %s",
            qdrant.address(settings),
            type(exc).__name__,
            reason,
        )
        return probe
    await probe.close()
    return qdrant.connect(settings)  # it answers: now with the version check


def install(
    app: web.Application, settings: RetrievalSettings, qdrant_settings: QdrantSettings
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Put the retrieval state on the app and return the cleanup context
    that opens the store at start and closes it (releasing an embedded
    path's lock) at shutdown."""
    app[RETRIEVAL] = RetrievalState(settings, qdrant_settings)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        rs = app[RETRIEVAL]
        client = await _open(qdrant_settings)
        rs.service = Retrieval(VectorStore(client), settings)
        log.info("retrieval store: %s", qdrant.address(qdrant_settings))
        try:
            yield
        finally:
            rs.service = None
            await client.close()

    return resources
