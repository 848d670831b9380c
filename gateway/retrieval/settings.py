"""Retrieval settings (the RAG guide's API_PREFIX, its 100/minute search
limit), from env vars like every settings struct."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from streamworker.protocol.settings import PositiveInt

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class RetrievalSettings(msgspec.Struct, kw_only=True):
    # Where the collections, documents and search routes live.
    api_prefix: str = "/api/v1"
    # The served model whose workers embed documents and queries.
    embedding_model: str = "gemma-3-270m"
    # Characters per chunk and shared between neighbours; never inside a word.
    chunk_size: PositiveInt = 800
    chunk_overlap: NonNegative = 120
    # A document longer than this is refused (413) before any work is done
    # (MAX_BODY_BYTES bounds the request around it too).
    max_document_chars: PositiveInt = 500_000
    # Inputs per embedding job: one engine call embeds them side by side.
    embed_batch_size: PositiveInt = 32
    # Embedding jobs one ingest keeps in the queue at once.
    embed_concurrency: PositiveInt = 2
    # Searches per minute per API key (per client address without keys); 0: off.
    search_rate_limit_rpm: NonNegative = 100
    # Dense only, or dense + BM25-style sparse fused by reciprocal rank.
    retrieval_mode: Literal["dense", "hybrid"] = "hybrid"
    max_top_k: PositiveInt = 50
    rag_default_top_k: PositiveInt = 4
    # Inputs one /v1/embeddings request may carry (OpenAI's limit).
    max_embedding_inputs: PositiveInt = 2048

    def __post_init__(self) -> None:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE")
        if not self.api_prefix.startswith("/") or self.api_prefix.endswith("/"):
            raise ValueError("API_PREFIX must start with '/' and not end with one")
