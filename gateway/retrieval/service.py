"""Ingest and search: text -> chunks -> vectors (through the queue) ->
Qdrant; a query -> its vector -> the nearest chunks (dense, or dense and
BM25-style sparse fused by reciprocal rank)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.embedding import embed, embedding_job
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.retrieval import chunking, sparse
from gateway.retrieval.store import build_filter

if TYPE_CHECKING:
    from gateway.retrieval.settings import RetrievalSettings
    from gateway.retrieval.store import CollectionInfo, Hit, VectorStore
    from gateway.state import GatewayState


class Retrieval:
    def __init__(self, store: VectorStore, settings: RetrievalSettings) -> None:
        self.store = store
        self.settings = settings

    async def vectors(
        self, st: GatewayState, texts: list[str], *, owner: str, request_id: str
    ) -> list[list[float]]:
        """Embeddings of `texts`, in order: batches of EMBED_BATCH_SIZE, a few
        jobs in the queue at once (each job is one engine call)."""
        size = self.settings.embed_batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        gate = asyncio.Semaphore(self.settings.embed_concurrency)

        async def one(batch: list[str]) -> list[list[float]]:
            async with gate:
                job = embedding_job(
                    self.settings.embedding_model,
                    list(batch),
                    owner=owner,
                    request_id=request_id,
                )
                return (await embed(st, job)).rows()

        results = await asyncio.gather(*(one(b) for b in batches))
        return [row for rows in results for row in rows]

    async def dimension(self, st: GatewayState, *, owner: str, request_id: str) -> int:
        """The embedding model's dimension, learnt from one short input."""
        return len((await self.vectors(st, ["dimension"], owner=owner, request_id=request_id))[0])

    def check_text(self, text: str) -> None:
        if not text.strip():
            raise BadRequest("The document's text is empty.", param="text")
        if len(text) > self.settings.max_document_chars:
            raise PayloadTooLarge(
                f"The document has {len(text)} characters; the limit is "
                f"{self.settings.max_document_chars} (MAX_DOCUMENT_CHARS).",
                param="text",
            )

    async def ingest(
        self,
        st: GatewayState,
        info: CollectionInfo,
        doc_id: str,
        text: str,
        metadata: dict[str, Any],
        *,
        markdown: bool | None,
        owner: str,
        request_id: str,
    ) -> int:
        """Chunk, embed and write one document; returns its chunk count."""
        self.check_text(text)
        chunks = chunking.chunk(
            text,
            size=self.settings.chunk_size,
            overlap=self.settings.chunk_overlap,
            markdown=markdown,
        )
        texts = [c.text for c in chunks]
        dense = await self.vectors(st, texts, owner=owner, request_id=request_id)
        sparse_vectors = [sparse.document_vector(t) for t in texts]
        await self.store.upsert_document(info, doc_id, chunks, dense, sparse_vectors, metadata)
        return len(chunks)

    async def search(
        self,
        st: GatewayState,
        info: CollectionInfo,
        query: str,
        *,
        top_k: int,
        where: dict[str, Any] | None,
        mode: str | None,
        owner: str,
        request_id: str,
    ) -> list[Hit]:
        condition = build_filter(where)  # a bad filter is a 400 before any work
        [vector] = await self.vectors(st, [query], owner=owner, request_id=request_id)
        hybrid = (mode or self.settings.retrieval_mode) == "hybrid"
        terms = sparse.query_vector(query) if hybrid else None
        return await self.store.search(info, vector, terms, top_k, condition)
