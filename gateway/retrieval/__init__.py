"""Retrieval on Qdrant: chunking, sparse (BM25-style) vectors, the store,
and the service that ingests documents and searches them. The gateway owns
the store (qdrant-client locks an embedded path to one process); embeddings
are computed by the workers, through the queue (gateway/embedding.py)."""
