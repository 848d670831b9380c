"""The vector store: collections and their chunks in Qdrant.

One Qdrant collection per collection, with a named dense vector (`dense`,
cosine, the embedding model's dimension) and a sparse one (`bm25`, IDF
modifier) for hybrid search. Who owns it, whether it is shared and which
model made it live in the collection's own metadata, so a snapshot or a
copy of the store carries them.

Point ids are derived from (collection, document id, chunk index): writing
a document again, or a retried ingest, overwrites the same points, and
chunks past the new count are deleted after, so re-uploading replaces a
document and nothing ever exists twice.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qdrant_client import models

from gateway.errors import ApiError, BadRequest, Conflict, NotFound

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient

    from gateway.retrieval.chunking import Chunk

DENSE = "dense"
SPARSE = "bm25"
_IDS = uuid.UUID("6f0c0a57-1c55-4a3e-9a61-8d1f3b0c2e11")  # namespace of point ids


class Forbidden(ApiError):
    status = 403
    code = "permission_denied"


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    owner: str
    shared: bool
    model: str
    dimension: int
    points: int
    created_at: int

    def view(self) -> dict[str, object]:
        return {
            "name": self.name,
            "object": "collection",
            "owner": self.owner,
            "shared": self.shared,
            "model": self.model,
            "dimension": self.dimension,
            "points": self.points,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Hit:
    doc_id: str
    chunk: int
    score: float
    text: str
    metadata: dict[str, Any]

    def view(self) -> dict[str, object]:
        return {
            "document_id": self.doc_id,
            "chunk": self.chunk,
            "score": self.score,
            "text": self.text,
            "metadata": self.metadata,
        }


def point_id(collection: str, doc_id: str, index: int) -> str:
    return str(uuid.uuid5(_IDS, f"{collection}\0{doc_id}\0{index}"))


def _missing(name: str) -> NotFound:
    # Another key's private collection gets this very answer.
    return NotFound(
        f"No collection named '{name}'.", param="collection", code="collection_not_found"
    )


def _field_condition(key: str, value: object) -> models.FieldCondition:
    field = key if key == "doc_id" else f"metadata.{key}"
    if isinstance(value, dict):
        ops = {k: v for k, v in value.items() if k in ("gt", "gte", "lt", "lte")}
        if not ops or len(ops) != len(value):
            raise BadRequest(
                f"filter.{key}: a range takes gt, gte, lt and lte only.", param="filter"
            )
        return models.FieldCondition(key=field, range=models.Range(**ops))
    if isinstance(value, list):
        if not value or not all(isinstance(v, str | int) for v in value):
            raise BadRequest(f"filter.{key}: a list must hold strings or integers.", param="filter")
        return models.FieldCondition(key=field, match=models.MatchAny(any=value))
    if isinstance(value, str | int | bool):
        return models.FieldCondition(key=field, match=models.MatchValue(value=value))
    raise BadRequest(f"filter.{key}: unsupported value {value!r}.", param="filter")


def build_filter(spec: dict[str, Any] | None) -> models.Filter | None:
    """`{"lang": "en", "year": {"gte": 2000}, "tag": ["a", "b"]}` on the
    documents' metadata (and `doc_id`): every condition must hold."""
    if not spec:
        return None
    return models.Filter(must=[_field_condition(k, v) for k, v in spec.items()])


class VectorStore:
    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client = client

    async def _info(self, name: str) -> CollectionInfo | None:
        if not await self.client.collection_exists(name):
            return None
        c = await self.client.get_collection(name)
        meta = c.config.metadata or {}
        vectors = c.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if dense is None or "owner" not in meta:
            return None  # not one of ours: made by someone else, left alone
        return CollectionInfo(
            name=name,
            owner=str(meta.get("owner", "")),
            shared=bool(meta.get("shared", False)),
            model=str(meta.get("model", "")),
            dimension=dense.size,
            points=c.points_count or 0,
            created_at=int(meta.get("created_at", 0)),
        )

    async def get(self, name: str, owner: str, *, write: bool = False) -> CollectionInfo:
        """The collection if `owner` may see it (own, shared, or keys not in
        use); 404 otherwise. `write`: only the owner may change it (403 for a
        shared collection of another key)."""
        info = await self._info(name)
        if info is None or not (not info.owner or info.owner == owner or info.shared):
            raise _missing(name)
        if write and info.owner and info.owner != owner:
            raise Forbidden(f"The collection '{name}' is shared read-only.", param="collection")
        return info

    async def create(
        self, name: str, owner: str, *, model: str, dimension: int, shared: bool
    ) -> CollectionInfo:
        if await self.client.collection_exists(name):
            raise Conflict(f"A collection named '{name}' exists.", param="name", code="exists")
        created = int(time.time())
        await self.client.create_collection(
            name,
            vectors_config={
                DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            },
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata={"owner": owner, "shared": shared, "model": model, "created_at": created},
        )
        return CollectionInfo(name, owner, shared, model, dimension, 0, created)

    async def list(self, owner: str) -> list[CollectionInfo]:
        out = []
        for c in (await self.client.get_collections()).collections:
            info = await self._info(c.name)
            if info is not None and (not info.owner or info.owner == owner or info.shared):
                out.append(info)
        return sorted(out, key=lambda i: i.name)

    async def delete(self, info: CollectionInfo) -> None:
        await self.client.delete_collection(info.name)

    async def upsert_document(
        self,
        info: CollectionInfo,
        doc_id: str,
        chunks: list[Chunk],
        dense: list[list[float]],
        sparse: list[tuple[list[int], list[float]]],
        metadata: dict[str, Any],
    ) -> None:
        if dense and len(dense[0]) != info.dimension:
            raise Conflict(
                f"The collection '{info.name}' holds {info.dimension}-dimensional vectors "
                f"(model {info.model}); this gateway's embedding model makes {len(dense[0])}.",
                param="collection",
                code="dimension_mismatch",
            )
        points = [
            models.PointStruct(
                id=point_id(info.name, doc_id, c.index),
                vector={
                    DENSE: vec,
                    SPARSE: models.SparseVector(indices=sp[0], values=sp[1]),
                },
                payload={
                    "doc_id": doc_id,
                    "chunk": c.index,
                    "chunks": len(chunks),
                    "text": c.text,
                    "heading": c.heading,
                    "metadata": metadata,
                },
            )
            for c, vec, sp in zip(chunks, dense, sparse, strict=True)
        ]
        for start in range(0, len(points), 256):
            await self.client.upsert(info.name, points[start : start + 256], wait=True)
        # Chunks the previous version had beyond this one's count.
        await self.client.delete(
            info.name,
            models.FilterSelector(
                filter=models.Filter(
                    must=[
                        models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id)),
                        models.FieldCondition(key="chunk", range=models.Range(gte=len(chunks))),
                    ]
                )
            ),
            wait=True,
        )

    async def delete_document(self, info: CollectionInfo, doc_id: str) -> int:
        selector = models.Filter(
            must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))]
        )
        count = (await self.client.count(info.name, count_filter=selector, exact=True)).count
        if count:
            await self.client.delete(info.name, models.FilterSelector(filter=selector), wait=True)
        return count

    async def documents(
        self, info: CollectionInfo, limit: int, offset: str | None
    ) -> tuple[list[dict[str, object]], str | None]:
        """One entry per document (its first chunk), and the next page's offset."""
        first = models.Filter(
            must=[models.FieldCondition(key="chunk", match=models.MatchValue(value=0))]
        )
        points, nxt = await self.client.scroll(
            info.name, scroll_filter=first, limit=limit, offset=offset, with_payload=True
        )
        docs = [
            {
                "id": p.payload["doc_id"],
                "chunks": p.payload["chunks"],
                "metadata": p.payload.get("metadata", {}),
            }
            for p in points
            if p.payload
        ]
        return docs, str(nxt) if nxt is not None else None

    async def search(
        self,
        info: CollectionInfo,
        dense: list[float],
        sparse: tuple[list[int], list[float]] | None,
        top_k: int,
        where: models.Filter | None,
    ) -> list[Hit]:
        if len(dense) != info.dimension:
            raise Conflict(
                f"The collection '{info.name}' was made with model {info.model} "
                f"({info.dimension} dimensions); the query has {len(dense)}.",
                param="collection",
                code="dimension_mismatch",
            )
        if sparse is None or not sparse[0]:
            result = await self.client.query_points(
                info.name,
                query=dense,
                using=DENSE,
                limit=top_k,
                query_filter=where,
                with_payload=True,
            )
        else:
            # Each list is fetched deeper than top_k so the fusion has room.
            depth = max(top_k * 4, 20)
            sv = models.SparseVector(indices=sparse[0], values=sparse[1])
            result = await self.client.query_points(
                info.name,
                prefetch=[
                    models.Prefetch(query=dense, using=DENSE, limit=depth, filter=where),
                    models.Prefetch(query=sv, using=SPARSE, limit=depth, filter=where),
                ],
                query=models.FusionQuery(fusion=models.Fusion.RRF),
                limit=top_k,
                with_payload=True,
            )
        return [
            Hit(
                doc_id=str(p.payload["doc_id"]),
                chunk=int(p.payload["chunk"]),
                score=float(p.score),
                text=str(p.payload["text"]),
                metadata=dict(p.payload.get("metadata", {})),
            )
            for p in result.points
            if p.payload
        ]
