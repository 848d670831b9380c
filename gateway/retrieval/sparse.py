"""BM25-style sparse vectors for hybrid search.

A document's vector holds, per term, BM25's saturated term frequency
(k1, b, with a fixed average length, since a collection's true average
changes as it grows); Qdrant multiplies in the inverse document frequency
at query time (the collection's sparse vector has the IDF modifier), so
rare terms weigh more without any corpus statistics kept here. A query's
vector is each of its terms once. Terms are hashed to 31-bit indices.

Pure: no I/O.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

K1 = 1.2
B = 0.75
AVG_TERMS = 100.0

_TERM = re.compile(r"\w+", re.UNICODE)
# Words that say nothing about a passage; IDF alone would leave them a weight.
STOPWORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or that the
    to was were which who what when where how with this these those did does do
    into than then there their they he she his her him i you we our your""".split()
)


def terms(text: str) -> list[str]:
    out = []
    for word in _TERM.findall(text.lower()):
        if word in STOPWORDS:
            continue
        # Light plural folding: "volcanoes" ~ "volcano", "cities" ~ "city".
        if len(word) > 4 and word.endswith("ies"):
            word = word[:-3] + "y"
        elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def _index(term: str) -> int:
    return zlib.crc32(term.encode()) & 0x7FFFFFFF


def document_vector(text: str) -> tuple[list[int], list[float]]:
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVG_TERMS)
    merged: dict[int, float] = {}
    for term, tf in counts.items():
        i = _index(term)
        merged[i] = merged.get(i, 0.0) + tf * (K1 + 1) / (tf + norm)
    return list(merged), list(merged.values())


def query_vector(text: str) -> tuple[list[int], list[float]]:
    indices = sorted({_index(t) for t in terms(text)})
    return indices, [1.0] * len(indices)
