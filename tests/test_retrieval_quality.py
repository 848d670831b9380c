"""Retrieval quality on a labelled set (tests/data/retrieval_set.json: 32
short encyclopedia-style documents, 30 questions written for them, each
answered by one document), with the default embedding model: recall@1 and
recall@3 for dense and hybrid search. Fails below 0.8 recall@3.

`pytest -s` prints the figures (docs/benchmarks.md, Retrieval).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.test_retrieval import WORKER, retrieval_env

SET = json.loads((Path(__file__).parent / "data" / "retrieval_set.json").read_text())
MIN_RECALL_AT_3 = 0.8


def recall(gw_url: str, mode: str) -> tuple[float, float]:
    at1 = at3 = 0
    for question, answer in SET["questions"]:
        r = httpx.post(
            gw_url + "/api/v1/search",
            json={"collection": "facts", "query": question, "top_k": 3, "mode": mode},
            timeout=120,
        )
        ranked = [h["document_id"] for h in r.json()["data"]]
        at1 += ranked[:1] == [answer]
        at3 += answer in ranked
    n = len(SET["questions"])
    return at1 / n, at3 / n


def test_recall_dense_and_hybrid(start_gateway, start_worker, tmp_path):
    assert len(SET["documents"]) >= 30 and len(SET["questions"]) >= 30
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path, SEARCH_RATE_LIMIT_RPM="0"))
    base = gw.url + "/api/v1/collections"
    assert httpx.post(base, json={"name": "facts"}, timeout=120).status_code == 201
    for doc_id, text in SET["documents"].items():
        r = httpx.put(f"{base}/facts/documents/{doc_id}", json={"text": text}, timeout=120)
        assert r.status_code == 200, r.text
    results = {mode: recall(gw.url, mode) for mode in ("dense", "hybrid")}
    for mode, (r1, r3) in results.items():
        print(f"\nretrieval {mode}: recall@1 {r1:.3f}  recall@3 {r3:.3f}")
    for mode, (_, r3) in results.items():
        assert r3 >= MIN_RECALL_AT_3, f"{mode} recall@3 {r3:.3f} < {MIN_RECALL_AT_3}"
