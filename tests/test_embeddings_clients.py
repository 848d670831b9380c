"""LangChain's and LlamaIndex's OpenAI embeddings classes against the real
gateway and a worker that embeds with the bundled model: each class must
get, for the same text, the vectors `/v1/embeddings` returns."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.embeddings.openai_like import OpenAILikeEmbedding

from tests.conftest import client_for
from tests.harness import Gateway, RedisServer, Worker

# The echo engine answers chat; embeddings always come from the embedding
# model (the bundled one), so this stack skips loading a chat model.
MODEL = "embed-clients"
TEXTS = [
    "The Danube flows through Vienna and Budapest.",
    "Mount Kilimanjaro is the highest mountain in Africa.",
    "Photosynthesis turns light into chemical energy.",
]


@pytest.fixture(scope="module")
def gateway(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    if not redis_server.ping():
        redis_server.start()
    logs = tmp_path_factory.mktemp("embed-clients")
    worker = Worker(
        redis_server.url, logs / "worker.log", "embed-clients", ENGINE="echo", MODEL_NAME=MODEL
    )
    gw = Gateway(
        redis_server.url,
        logs / "gateway.log",
        EMBEDDING_MODEL=MODEL,
        QDRANT_PATH=str(logs / "qdrant"),
    )
    try:
        worker.start(wait_registered=True, redis=redis_server)
        gw.start()
        yield gw
    finally:
        gw.stop(timeout=10)
        worker.stop(timeout=20)


@pytest.fixture(scope="module")
def reference(gateway: Gateway) -> list[list[float]]:
    """The vectors of TEXTS as the `openai` client gets them, as floats."""
    client = client_for(gateway)
    out = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    vectors = [d.embedding for d in out.data]
    # Distinct texts give distinct vectors: the comparisons are not vacuous.
    assert max(abs(x - y) for x, y in zip(vectors[0], vectors[1], strict=True)) > 1e-2
    return vectors


def assert_same(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert len(a) == len(b) == 640
        # One engine computed both; only the batch around each input may
        # differ between the calls, which moves float32 sums in the last bits.
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
        assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-3)


def test_langchain_openai_embeddings(gateway: Gateway, reference: list[list[float]]) -> None:
    # Without check_embedding_ctx_length=False LangChain sends tiktoken ids
    # (OpenAI's vocabulary, not the served model's) instead of the text.
    emb = OpenAIEmbeddings(
        model=MODEL,
        base_url=gateway.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    assert_same(emb.embed_documents(TEXTS), reference)
    assert_same([emb.embed_query(TEXTS[1])], [reference[1]])


def test_llamaindex_openai_embedding(gateway: Gateway, reference: list[list[float]]) -> None:
    # `model` is checked against OpenAI's model names; `model_name` is sent
    # as is and bypasses that check.
    emb = OpenAIEmbedding(
        model_name=MODEL, api_base=gateway.url + "/v1", api_key="unused", max_retries=0
    )
    assert_same(emb.get_text_embedding_batch(TEXTS), reference)
    assert_same([emb.get_query_embedding(TEXTS[2])], [reference[2]])


def test_llamaindex_openai_like_embedding(gateway: Gateway, reference: list[list[float]]) -> None:
    emb = OpenAILikeEmbedding(
        model_name=MODEL, api_base=gateway.url + "/v1", api_key="unused", max_retries=0
    )
    assert_same(emb.get_text_embedding_batch(TEXTS), reference)
