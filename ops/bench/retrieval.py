"""`python -m ops.bench.retrieval [--chunks 10000]`: retrieval figures.

A private redis-server, one worker (echo engine for chat; embeddings from
the default embedding model) and a gateway on an embedded Qdrant path, as
child processes. It ingests --chunks sentences through the documents API
(documents of --per-doc sentences, cut into chunks of at most 80
characters: about 0.7 chunks a sentence) and reports chunks/s, then runs
--searches dense and hybrid searches and reports their latency p50/p99.
`--engine-only` embeds the same chunks in this process instead, with
llama-cpp-python's batch embed and with the worker's Embedder, for the
ratio. Prints one JSON object; docs/benchmarks.md
(Retrieval) quotes it. Not part of `just bench`: on a CPU host the
embeddings dominate.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.harness import Gateway, RedisServer, Worker  # noqa: E402

MODEL = "bench-embed"
SUBJECTS = "river lake mountain city island desert forest valley bridge harbour".split()
VERBS = "borders feeds crosses overlooks shelters divides joins faces".split()


def sentence(rng: random.Random, i: int) -> str:
    s, o = rng.sample(SUBJECTS, 2)
    return f"The {s} number {i} {rng.choice(VERBS)} the {o} of region {rng.randrange(1000)}."


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def store_only(chunks: int, searches: int) -> dict[str, object]:
    """The store's share alone: --chunks points of the model's dimension
    (random unit vectors, BM25-style sparse vectors of real sentences)
    written and searched on an embedded path, no embedding model, no queue."""
    import asyncio

    from gateway.retrieval import sparse
    from gateway.retrieval.chunking import Chunk
    from gateway.retrieval.store import VectorStore
    from streamworker.qdrant import QdrantSettings, connect

    rng = random.Random(11)

    def unit(dim: int = 640) -> list[float]:
        v = [rng.gauss(0, 1) for _ in range(dim)]
        n = sum(x * x for x in v) ** 0.5
        return [x / n for x in v]

    async def run() -> dict[str, object]:
        client = connect(QdrantSettings(qdrant_path=tempfile.mkdtemp(prefix="bench-store-")))
        store = VectorStore(client)
        info = await store.create("bench", "", model="random", dimension=640, shared=False)
        t0 = time.perf_counter()
        per_doc = 100
        for d in range(0, chunks, per_doc):
            texts = [sentence(rng, d + i) for i in range(per_doc)]
            parts = [Chunk(i, t, "") for i, t in enumerate(texts)]
            await store.upsert_document(
                info,
                f"doc{d}",
                parts,
                [unit() for _ in texts],
                [sparse.document_vector(t) for t in texts],
                {},
            )
        write_s = time.perf_counter() - t0
        latency: dict[str, dict[str, float]] = {}
        for mode in ("dense", "hybrid"):
            times = []
            for i in range(searches):
                q = f"Which {rng.choice(SUBJECTS)} {rng.choice(VERBS)} region {i}?"
                vec = unit()
                t = time.perf_counter()
                terms = sparse.query_vector(q) if mode == "hybrid" else None
                await store.search(info, vec, terms, 5, None)
                times.append((time.perf_counter() - t) * 1000)
            latency[mode] = {
                "p50_ms": round(statistics.median(times), 1),
                "p99_ms": round(percentile(times, 0.99), 1),
            }
        await client.close()
        return {
            "store_only": True,
            "points": chunks,
            "write_chunks_per_second": round(chunks / write_s, 1),
            "search_latency": latency,
        }

    return asyncio.run(run())


def documents(rng: random.Random, chunks: int, per_doc: int) -> list[tuple[str, str]]:
    docs = []
    for d in range(0, chunks, per_doc):
        n = min(per_doc, chunks - d)
        docs.append((f"doc{d}", " ".join(sentence(rng, d + i) for i in range(n))))
    return docs


def engine_only(sentences: int, per_doc: int, threads: int) -> dict[str, object]:
    """The embedding engine alone, in this process, on the chunks the whole
    path would make of the same documents, 64 a call (EMBED_BATCH_SIZE
    below): llama-cpp-python's own batched `Llama.embed` (one decode of up
    to 2048 tokens), then streamworker's Embedder. Their ratio is what the
    engine costs or saves; the whole path's figure over this one is what
    the queue, the gateway and the store cost."""
    import llama_cpp

    from gateway.retrieval.chunking import chunk
    from streamworker.engines.embedder import Embedder
    from streamworker.engines.model_file import resolve_model_path
    from streamworker.settings import EmbeddingSettings

    texts = [
        c.text
        for _, text in documents(random.Random(7), sentences, per_doc)
        for c in chunk(text, size=80, overlap=0, markdown=False)
    ]
    batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
    llm = llama_cpp.Llama(
        model_path=str(resolve_model_path("")),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_threads=threads,
        verbose=False,
    )
    llm.embed(texts[:4])  # warm
    t0 = time.perf_counter()
    tokens = sum(llm.embed(b, normalize=True, return_count=True)[1] for b in batches)
    raw_s = time.perf_counter() - t0
    llm.close()
    embedder = Embedder(EmbeddingSettings(embedding_n_threads=threads))
    embedder.embed(texts[:4])
    t0 = time.perf_counter()
    for b in batches:
        embedder.embed(b)
    ours_s = time.perf_counter() - t0
    embedder.close()
    return {
        "engine_only": True,
        "chunks": len(texts),
        "tokens": tokens,
        "llama_cpp_embed_chunks_per_second": round(len(texts) / raw_s, 1),
        "embedder_chunks_per_second": round(len(texts) / ours_s, 1),
        "embedder_tokens_per_second": round(tokens / ours_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--per-doc", type=int, default=50)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4, help="documents sent at once")
    parser.add_argument("--threads", type=int, default=2, help="the worker's EMBEDDING_N_THREADS")
    parser.add_argument(
        "--store-only", action="store_true", help="the Qdrant side alone (no model, no queue)"
    )
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="the embedding engine alone, in process (llama.cpp's batch embed vs ours)",
    )
    args = parser.parse_args()
    if args.engine_only:
        print(json.dumps(engine_only(args.chunks, args.per_doc, args.threads)))
        return 0
    if args.store_only:
        print(json.dumps(store_only(args.chunks, args.searches)))
        return 0
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    worker = Worker(
        redis.url,
        tmp / "worker.log",
        "bench-w",
        ENGINE="echo",
        MODEL_NAME=MODEL,
        EMBEDDING_N_THREADS=str(args.threads),
    )
    gateway = Gateway(
        redis.url,
        tmp / "gateway.log",
        EMBEDDING_MODEL=MODEL,
        QDRANT_PATH=str(tmp / "qdrant"),
        SEARCH_RATE_LIMIT_RPM="0",
        # One sentence per chunk: chunks of about 60 characters.
        CHUNK_SIZE="80",
        CHUNK_OVERLAP="0",
        EMBED_BATCH_SIZE="64",
        MAX_QUEUE="1000",
    )
    try:
        worker.start(redis=redis)
        gateway.start()
        client = httpx.Client(base_url=gateway.url + "/api/v1", timeout=3600)
        assert client.post("/collections", json={"name": "bench"}).status_code == 201
        docs = documents(rng, args.chunks, args.per_doc)

        def put(doc: tuple[str, str]) -> int:
            r = client.put(f"/collections/bench/documents/{doc[0]}", json={"text": doc[1]})
            r.raise_for_status()
            return r.json()["chunks"]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            chunks = sum(pool.map(put, docs))
        ingest_s = time.perf_counter() - t0
        points = client.get("/collections/bench").json()["points"]
        latency: dict[str, dict[str, float]] = {}
        for mode in ("dense", "hybrid"):
            times = []
            for i in range(args.searches):
                q = f"Which {rng.choice(SUBJECTS)} {rng.choice(VERBS)} region {i}?"
                t = time.perf_counter()
                r = client.post(
                    "/search", json={"collection": "bench", "query": q, "top_k": 5, "mode": mode}
                )
                times.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
            latency[mode] = {
                "p50_ms": round(statistics.median(times), 1),
                "p99_ms": round(percentile(times, 0.99), 1),
            }
        print(
            json.dumps(
                {
                    "chunks": chunks,
                    "points": points,
                    "ingest_seconds": round(ingest_s, 1),
                    "chunks_per_second": round(chunks / ingest_s, 1),
                    "search_latency": latency,
                    "searches_per_mode": args.searches,
                }
            )
        )
        return 0
    finally:
        gateway.stop()
        worker.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
