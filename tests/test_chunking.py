"""Pure retrieval logic: chunking, sparse vectors, filters, embedding
inputs, the embedding result on the wire, and the one-process store rule."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.embeddings_api import inputs_of
from gateway.errors import BadRequest
from gateway.retrieval import sparse
from gateway.retrieval.chunking import chunk
from gateway.retrieval.store import build_filter, point_id
from streamworker.protocol.wire import EmbeddingResult, decode_embedding, encode
from streamworker.qdrant import QdrantSettings, single_process_problem

pytestmark = pytest.mark.unit

WORDS = st.lists(st.from_regex(r"[a-z]{1,12}", fullmatch=True), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(WORDS, st.integers(20, 200), st.integers(0, 60))
def test_chunks_are_bounded_whole_words_and_cover_the_text(words, size, overlap):
    overlap = min(overlap, size - 1)
    text = " ".join(words)
    chunks = chunk(text, size=size, overlap=overlap, markdown=False)
    vocabulary = set(words)
    for c in chunks:
        assert len(c.text) <= size
        # Never cut inside a word: every piece is a word of the text.
        assert all(w in vocabulary for w in c.text.split())
    # Nothing lost: the chunks, overlaps removed, spell the text again.
    joined = " ".join(c.text for c in chunks).split()
    assert set(joined) == vocabulary
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_overlap_repeats_the_last_words_of_the_previous_chunk():
    text = " ".join(f"w{i:03d}" for i in range(60))
    chunks = chunk(text, size=50, overlap=12, markdown=False)
    for a, b in itertools.pairwise(chunks):
        tail = a.text.split()[-2:]
        assert b.text.split()[:2] == tail


def test_markdown_headings_stay_with_their_section():
    text = (
        "# Guide\nIntro words here.\n\n## Install\n"
        + " ".join(["step"] * 40)
        + "\n\n## Use\nRun it.\n```\n# not a heading\n```\n"
    )
    chunks = chunk(text, size=80, overlap=10)
    headings = [c.heading for c in chunks]
    assert headings[0] == "Guide"
    assert {"Guide > Install", "Guide > Use"} <= set(headings)
    for c in chunks:
        assert c.text.startswith(c.heading + "\n")  # each chunk carries its heading
        assert len(c.text) <= 80
    use = [c for c in chunks if c.heading == "Guide > Use"]
    assert len(use) == 1 and "# not a heading" in use[0].text


def test_a_word_longer_than_a_chunk_is_the_only_thing_ever_cut():
    chunks = chunk("short " + "x" * 130 + " tail", size=50, overlap=5, markdown=False)
    assert all(len(c.text) <= 50 for c in chunks)
    assert "".join(c.text for c in chunks).count("x") >= 130


def test_sparse_vectors_fold_plurals_and_skip_stopwords():
    assert sparse.terms("The Volcanoes of the cities") == ["volcanoe", "city"]
    idx, vals = sparse.document_vector("lava lava rock")
    assert len(idx) == 2 and all(v > 0 for v in vals)
    assert max(vals) == vals[idx.index(sparse.query_vector("lava")[0][0])]


def test_filters_and_ids():
    f = build_filter({"lang": "en", "year": {"gte": 2000}, "tag": ["a", "b"]})
    assert f is not None and len(f.must) == 3
    assert build_filter(None) is None
    for bad in ({"x": {"near": 1}}, {"x": []}, {"x": [1.5]}, {"x": None}):
        with pytest.raises(BadRequest):
            build_filter(bad)
    assert point_id("c", "d", 0) == point_id("c", "d", 0) != point_id("c", "d", 1)


def test_embedding_inputs():
    assert inputs_of("a", max_inputs=4, max_chars=10) == ["a"]
    assert inputs_of([1, 2], max_inputs=4, max_chars=10) == [[1, 2]]
    assert inputs_of(["a", [3]], max_inputs=4, max_chars=10) == ["a", [3]]
    for bad in ("", " ", [], [""], [[]], [1.5], {"a": 1}, ["a"] * 5, ["x" * 11], [True], [-1]):
        with pytest.raises(BadRequest):
            inputs_of(bad, max_inputs=4, max_chars=10)


def test_embedding_result_round_trip():
    vectors = [[0.5, -1.0, 2.0], [0.0, 0.25, -0.125]]
    wire = encode(EmbeddingResult.of(vectors, [3, 4]))
    back = decode_embedding(wire)
    assert back.dim == 3 and back.tokens == [3, 4] and back.rows() == vectors
    assert re.fullmatch(rb'\{"dim":3,"vectors":"[A-Za-z0-9+/=]+","tokens":\[3,4\]\}', wire)


def test_embedded_store_refuses_many_processes():
    embedded = QdrantSettings(qdrant_path="/data/q")
    assert single_process_problem(embedded, 1) is None
    problem = single_process_problem(embedded, 4)
    assert problem is not None and "\n" not in problem and "QDRANT_HOST" in problem
    assert single_process_problem(QdrantSettings(qdrant_host="q"), 4) is None
    assert single_process_problem(QdrantSettings(qdrant_url="https://q:6333"), 4) is None
