"""Retrieval end to end on real processes: a gateway that owns an embedded
Qdrant path, an echo worker whose embeddings come from the bundled model,
the documents and search API, the `openai` client for embeddings."""

from __future__ import annotations

import base64
import json
import struct
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import client_for
from tests.harness import wait_for
from tests.test_security import keys_file, sha

MODEL = "echo-test"
WORKER = {"ENGINE": "echo", "MODEL_NAME": MODEL}


def retrieval_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"EMBEDDING_MODEL": MODEL, "QDRANT_PATH": str(tmp_path / "qdrant"), **extra}


@pytest.fixture
def stack(start_gateway, start_worker, tmp_path):
    start_worker(**WORKER)
    return start_gateway(**retrieval_env(tmp_path))


def api(gw, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, gw.url + "/api/v1" + path, headers=headers, timeout=120, **kw)


def error_code(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err["code"]


DOCS = {
    "paris": ("Paris is the capital of France, on the Seine.", {"lang": "en", "year": 2001}),
    "berlin": ("Berlin is the capital of Germany, on the Spree.", {"lang": "en", "year": 1990}),
    "roma": ("Roma è la capitale d'Italia, sul Tevere.", {"lang": "it", "year": 2010}),
}


def load(gw, name: str = "docs", key: str | None = None) -> None:
    assert api(gw, "POST", "/collections", key, json={"name": name}).status_code == 201
    for doc_id, (text, meta) in DOCS.items():
        r = api(
            gw,
            "PUT",
            f"/collections/{name}/documents/{doc_id}",
            key,
            json={"text": text, "metadata": meta},
        )
        assert r.status_code == 200 and r.json()["chunks"] == 1, r.text


def search(gw, query: str, key: str | None = None, **kw) -> httpx.Response:
    return api(gw, "POST", "/search", key, json={"collection": "docs", "query": query, **kw})


def test_embeddings_through_the_openai_client(stack):
    client = client_for(stack)
    one = client.embeddings.create(model=MODEL, input="The Seine flows through Paris.")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 640
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens
    many = client.embeddings.create(
        model=MODEL, input=["Paris", "Berlin", "Paris"], encoding_format="float"
    )
    vectors = [d.embedding for d in many.data]
    assert [d.index for d in many.data] == [0, 1, 2]
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5) and vectors[0] != vectors[1]
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-3)  # unit length
    # base64 is what the openai client asks for by default: little-endian float32.
    raw = httpx.post(
        stack.url + "/v1/embeddings",
        json={"model": MODEL, "input": "Paris", "encoding_format": "base64"},
        timeout=60,
    ).json()
    floats = struct.unpack("<640f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(floats) == pytest.approx(vectors[0], abs=1e-5)
    ids = client.embeddings.create(model=MODEL, input=[[2, 9550, 603]])
    assert len(ids.data[0].embedding) == 640
    assert client.embeddings.create(model=MODEL, input="x", dimensions=640).data
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert e.value.code == "unsupported_parameter"
    for bad in ("", [], [""], [1.5], [[]], {"a": 1}, 7):
        r = httpx.post(
            stack.url + "/v1/embeddings", json={"model": MODEL, "input": bad}, timeout=10
        )
        error_code(r, 400)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    # Longer than the embedding context (EMBEDDING_N_CTX 2048): refused, not truncated.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="river " * 3000)
    assert e.value.code == "context_length_exceeded"


def test_collections_documents_and_search(stack):
    gw = stack
    load(gw)
    assert error_code(api(gw, "POST", "/collections", json={"name": "docs"}), 409) == "exists"
    info = api(gw, "GET", "/collections/docs").json()
    assert info["points"] == 3 and info["dimension"] == 640 and info["model"] == MODEL
    assert [c["name"] for c in api(gw, "GET", "/collections").json()["data"]] == ["docs"]

    hits = search(gw, "What is the capital of Germany?", top_k=2).json()["data"]
    assert hits[0]["document_id"] == "berlin" and hits[0]["metadata"]["year"] == 1990
    for mode in ("dense", "hybrid"):
        top = search(gw, "capital of Germany", top_k=1, mode=mode).json()["data"]
        assert top[0]["document_id"] == "berlin"
    only_it = search(gw, "capital", filter={"lang": "it"}).json()["data"]
    assert [h["document_id"] for h in only_it] == ["roma"]
    recent = search(gw, "capital", filter={"year": {"gte": 2000}}).json()["data"]
    assert {h["document_id"] for h in recent} == {"paris", "roma"}
    either = search(gw, "capital", filter={"lang": ["it", "xx"]}).json()["data"]
    assert [h["document_id"] for h in either] == ["roma"]

    # Re-uploading an id replaces its chunks: three chunks, then one.
    long_text = "\n\n".join(f"## Part {i}\n" + " ".join(["lava"] * 150) for i in range(3))
    r = api(gw, "PUT", "/collections/docs/documents/paris", json={"text": long_text})
    assert r.json()["chunks"] >= 3
    assert api(gw, "GET", "/collections/docs").json()["points"] == 2 + r.json()["chunks"]
    api(gw, "PUT", "/collections/docs/documents/paris", json={"text": DOCS["paris"][0]})
    assert api(gw, "GET", "/collections/docs").json()["points"] == 3
    docs = api(gw, "GET", "/collections/docs/documents").json()["data"]
    assert sorted(d["id"] for d in docs) == ["berlin", "paris", "roma"]

    # A POST without an id gets one; delete removes every chunk.
    made = api(gw, "POST", "/collections/docs/documents", json={"text": "Oslo is in Norway."})
    assert made.status_code == 201
    gone = api(gw, "DELETE", f"/collections/docs/documents/{made.json()['id']}")
    assert gone.json()["deleted"] is True and gone.json()["chunks"] == 1
    missing = api(gw, "DELETE", "/collections/docs/documents/nope")
    assert error_code(missing, 404) == "document_not_found"
    assert api(gw, "GET", "/collections/docs").json()["points"] == 3

    # Bad inputs are 4xx in OpenAI's error shape, and nothing is written.
    empty = api(gw, "PUT", "/collections/docs/documents/e", json={"text": "   "})
    assert error_code(empty, 400) is None
    assert error_code(search(gw, "x", top_k="3"), 400) is None  # wrong type
    assert error_code(search(gw, ""), 400) is None
    assert error_code(search(gw, "x", filter={"year": {"near": 1}}), 400) is None
    assert (
        error_code(api(gw, "PUT", "/collections/docs/documents/w", json={"text": 5}), 400) is None
    )
    assert error_code(api(gw, "POST", "/collections", json={"name": "bad name!"}), 400) is None
    unknown = api(gw, "POST", "/search", json={"collection": "nope", "query": "x"})
    assert error_code(unknown, 404) == "collection_not_found"
    assert error_code(api(gw, "GET", "/collections/nope/documents"), 404) == "collection_not_found"
    assert api(gw, "GET", "/collections/docs").json()["points"] == 3

    assert api(gw, "DELETE", "/collections/docs").json()["deleted"] is True
    assert error_code(api(gw, "GET", "/collections/docs"), 404) == "collection_not_found"


def test_huge_document_is_refused(start_gateway, start_worker, tmp_path):
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path, MAX_DOCUMENT_CHARS="2000"))
    assert api(gw, "POST", "/collections", json={"name": "docs"}).status_code == 201
    big = api(gw, "PUT", "/collections/docs/documents/big", json={"text": "word " * 1000})
    assert error_code(big, 413) == "request_too_large"
    assert api(gw, "GET", "/collections/docs").json()["points"] == 0


def test_collections_belong_to_keys_unless_shared(start_gateway, start_worker, tmp_path):
    start_worker(**WORKER)
    path = keys_file(
        tmp_path,
        {"name": "alice", "sha256": sha("sk-alice")},
        {"name": "bob", "sha256": sha("sk-bob")},
    )
    gw = start_gateway(
        **retrieval_env(tmp_path, OPENAI_API_KEY_REQUIRED="true", API_KEYS_FILE=path)
    )
    load(gw, "docs", key="sk-alice")
    made = api(gw, "POST", "/collections", "sk-alice", json={"name": "pub", "shared": True})
    assert made.json()["shared"] is True and made.json()["owner"] == "alice"
    api(gw, "PUT", "/collections/pub/documents/d", "sk-alice", json={"text": "Lima is in Peru."})

    assert [c["name"] for c in api(gw, "GET", "/collections", "sk-bob").json()["data"]] == ["pub"]
    # Another key's private collection answers exactly as a missing one.
    for r in (
        api(gw, "GET", "/collections/docs", "sk-bob"),
        search(gw, "capital", key="sk-bob"),
        api(gw, "DELETE", "/collections/docs", "sk-bob"),
    ):
        assert error_code(r, 404) == "collection_not_found"
    shared = api(gw, "POST", "/search", "sk-bob", json={"collection": "pub", "query": "Peru"})
    assert shared.json()["data"][0]["document_id"] == "d"
    write = api(gw, "PUT", "/collections/pub/documents/x", "sk-bob", json={"text": "no"})
    assert error_code(write, 403) == "permission_denied"
    assert error_code(api(gw, "DELETE", "/collections/pub", "sk-bob"), 403) == "permission_denied"
    assert search(gw, "capital", key="sk-alice").json()["data"]


def test_search_rate_limit(start_gateway, start_worker, tmp_path):
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path, SEARCH_RATE_LIMIT_RPM="3"))
    load(gw)
    for _ in range(3):
        ok = search(gw, "capital")
        assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "3"
    refused = search(gw, "capital")
    assert error_code(refused, 429) == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1
    # Its own bucket: embeddings and documents are not counted against it.
    assert api(gw, "GET", "/collections/docs").status_code == 200


def test_a_gateway_restart_keeps_the_data(start_gateway, start_worker, tmp_path, services):
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path))
    load(gw)
    gw.kill()  # no clean shutdown: what was acknowledged must be on disk
    services.remove(gw)
    again = start_gateway(**retrieval_env(tmp_path))
    assert api(again, "GET", "/collections/docs").json()["points"] == 3
    assert search(again, "capital of Germany", top_k=1).json()["data"][0]["document_id"] == "berlin"


def test_worker_killed_during_an_embedding_batch(start_gateway, start_worker, tmp_path, r):
    """The job of the killed worker is reclaimed and run again; the ingest
    completes, and every chunk is one point (ids derive from the chunk)."""
    lease = {"JOB_LEASE_SECONDS": "3"}
    first = start_worker("victim", **WORKER, **lease)
    gw = start_gateway(
        **retrieval_env(
            tmp_path,
            CHUNK_SIZE="200",
            CHUNK_OVERLAP="20",
            EMBED_BATCH_SIZE="4",
            EMBED_CONCURRENCY="1",
            **lease,
        )
    )
    assert api(gw, "POST", "/collections", json={"name": "docs"}).status_code == 201
    text = " ".join(f"River {i} runs through valley {i} and town {i}." for i in range(60))
    result: dict[str, object] = {}

    def ingest() -> None:
        try:
            result["r"] = httpx.put(
                gw.url + "/api/v1/collections/docs/documents/long", json={"text": text}, timeout=600
            )
        except Exception as exc:  # reported by the assertion below
            result["r"] = exc

    put = threading.Thread(target=ingest)
    put.start()
    # Kill it inside a batch: one batch of the document done, the next running.
    wait_for(lambda: "4 input(s)" in first.output(), timeout=300, what="first batch")
    wait_for(
        lambda: any(r.hget(k, "status") == b"running" for k in r.scan_iter("sw:*:job:*")),
        timeout=60,
        interval=0.01,
        what="a running embedding job",
    )
    first.kill()
    start_worker("rescuer", **WORKER, **lease)
    put.join(600)
    assert not put.is_alive()
    resp = result["r"]
    assert isinstance(resp, httpx.Response), resp
    assert resp.status_code == 200, resp.text
    chunks = resp.json()["chunks"]
    assert chunks > 8
    assert api(gw, "GET", "/collections/docs").json()["points"] == chunks
    attempts = [int(r.hget(k, "attempt") or 0) for k in r.scan_iter("sw:*:job:*")]
    assert max(attempts) >= 2, "the interrupted job ran again"
    docs = api(gw, "GET", "/collections/docs/documents").json()["data"]
    assert docs == [{"id": "long", "chunks": chunks, "metadata": {}}]


def test_rag_chat_with_sources(stack, r):
    gw = stack
    load(gw)
    client = client_for(gw)
    question = [{"role": "user", "content": "What is the capital of Germany?"}]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=question,
        max_tokens=5,
        extra_body={"rag": {"collection": "docs", "top_k": 2}},
    )
    extra = answer.model_extra or {}
    sources = extra["sources"]
    assert [s["index"] for s in sources] == [1, 2]
    assert sources[0]["document_id"] == "berlin" and sources[0]["collection"] == "docs"
    assert answer.choices[0].message.content
    # The job the worker ran starts with the numbered sources, as a system message.
    [job] = [k for k in r.scan_iter("sw:*:job:*") if r.hget(k, "kind") == b"chat"]
    messages = json.loads(r.hget(job, "request"))["messages"]
    assert messages[0]["role"] == "system" and messages[1:] == question
    assert "[1] (document berlin, part 1)\nBerlin is the capital" in messages[0]["content"]
    assert "[2] (document " in messages[0]["content"]

    # Streamed, read raw: a `sources` event comes before [DONE].
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": question,
            "stream": True,
            "rag": {"collection": "docs", "top_k": 1, "filter": {"lang": "en"}},
        },
        timeout=60,
    ) as resp:
        body = "".join(resp.iter_text())
    frames = [f for f in body.split("\n\n") if f.strip() and not f.startswith(":")]
    assert frames[-1] == "data: [DONE]"
    assert frames[-2].startswith("event: sources\n")
    streamed = json.loads(frames[-2].split("data: ", 1)[1])
    assert streamed["choices"] == [] and streamed["sources"][0]["document_id"] == "berlin"
    # The openai client passes over that frame while streaming.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=question,
        stream=True,
        max_tokens=50,
        extra_body={"rag": {"collection": "docs"}},
    )
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(
            model=MODEL, messages=question, extra_body={"rag": {"collection": "nope"}}
        )
    assert e.value.code == "collection_not_found"
    bad = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": question, "rag": {"collection": 5}},
        timeout=10,
    )
    error_code(bad, 400)
    jobs = httpx.post(
        gw.url + "/v1/jobs",
        json={"model": MODEL, "messages": question, "rag": {"collection": "docs"}},
        timeout=10,
    )
    assert error_code(jobs, 400) == "unsupported_parameter"


def test_a_collection_of_another_dimension_is_a_409(start_gateway, start_worker, tmp_path):
    """A collection filled by another embedding model (8 dimensions here,
    made on the path before the gateway opens it) is refused, not crashed on."""
    from qdrant_client import QdrantClient, models

    made = QdrantClient(path=str(tmp_path / "qdrant"))
    made.create_collection(
        "old",
        vectors_config={"dense": models.VectorParams(size=8, distance=models.Distance.COSINE)},
        metadata={"owner": "", "shared": False, "model": "other-model", "created_at": 0},
    )
    made.close()
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path))
    assert api(gw, "GET", "/collections/old").json()["dimension"] == 8
    put = api(gw, "PUT", "/collections/old/documents/a", json={"text": "Lima is in Peru."})
    assert error_code(put, 409) == "dimension_mismatch"
    found = api(gw, "POST", "/search", json={"collection": "old", "query": "Peru"})
    assert error_code(found, 409) == "dimension_mismatch"
    assert "other-model" in found.json()["error"]["message"]


def test_embeddings_queue_full_is_a_429(start_gateway, start_worker, tmp_path, r):
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path, MAX_QUEUE="1"))
    url = gw.url + "/v1/embeddings"
    big = {"model": MODEL, "input": [f"River {i} flows to the sea. " * 8 for i in range(12)]}
    done: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: done.append(httpx.post(url, json=big, timeout=600)))]
    threads[0].start()
    wait_for(
        lambda: any(r.hget(k, "status") == b"running" for k in r.scan_iter("sw:*:job:*")),
        timeout=60,
        interval=0.01,
        what="the first job running",
    )
    threads.append(
        threading.Thread(target=lambda: done.append(httpx.post(url, json=big, timeout=600)))
    )
    threads[1].start()
    wait_for(lambda: r.get(f"sw:{{{MODEL}}}:queued") == b"1", timeout=30, what="one queued")
    full = httpx.post(url, json={"model": MODEL, "input": "x"}, timeout=30)
    assert error_code(full, 429) == "queue_full" and int(full.headers["Retry-After"]) >= 1
    for t in threads:
        t.join(600)
    assert [d.status_code for d in done] == [200, 200]
