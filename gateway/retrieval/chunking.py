"""Text -> chunks: at most `size` characters, neighbours sharing up to
`overlap` characters, never cut inside a word; in Markdown, each chunk
carries the headings of the section it comes from, so a chunk read alone
still says what it is about.

Pure: no I/O (tests/test_chunking.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_WORD = re.compile(r"\S+\s*")
_FENCE = re.compile(r"^(```|~~~)")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str  # the heading path (Markdown) and the body piece: what is embedded
    heading: str  # "" outside Markdown sections


def looks_like_markdown(text: str) -> bool:
    return any(_HEADING.match(line) for line in text.splitlines())


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) per Markdown section, in order. A heading's
    path holds the headings above it ("Guide > Install > Linux")."""
    path: list[tuple[int, str]] = []
    sections: list[tuple[str, str]] = []
    body: list[str] = []
    fenced = False

    def close() -> None:
        joined = "\n".join(body).strip()
        if joined or path:
            sections.append((" > ".join(t for _, t in path), joined))
        body.clear()

    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m is None:
            body.append(line)
            continue
        close()
        level = len(m.group(1))
        path = [(lvl, t) for lvl, t in path if lvl < level]
        path.append((level, m.group(2).strip()))
    close()
    # A heading with no body of its own is carried by the first subsection.
    return [(h, b) for h, b in sections if b]


def _pieces(body: str, budget: int, overlap: int) -> list[str]:
    """Pack whole words into pieces of at most `budget` characters; each
    piece after the first starts with the last words of the previous one,
    up to `overlap` characters. Only a single word longer than the budget
    is ever cut (there is no boundary inside it to use)."""
    words: list[str] = []
    for m in _WORD.finditer(body):
        w = m.group(0)
        while len(w.rstrip()) > budget:
            words.append(w[:budget])
            w = w[budget:]
        words.append(w)
    pieces: list[str] = []
    start = 0
    while start < len(words):
        end, size = start, 0
        while end < len(words) and size + len(words[end].rstrip()) <= budget:
            size += len(words[end])
            end += 1
        end = max(end, start + 1)
        pieces.append("".join(words[start:end]).strip())
        if end >= len(words):
            break
        # Step back over whole words for the overlap, always moving forward.
        back, kept = end, 0
        while back - 1 > start and kept + len(words[back - 1]) <= overlap:
            back -= 1
            kept += len(words[back])
        start = back
    return pieces


def chunk(text: str, *, size: int, overlap: int, markdown: bool | None = None) -> list[Chunk]:
    """The chunks of `text`; `markdown=None` decides by looking for headings."""
    if markdown is None:
        markdown = looks_like_markdown(text)
    sections = _sections(text) if markdown else [("", text.strip())]
    chunks: list[Chunk] = []
    for heading, body in sections:
        prefix = heading + "\n" if heading else ""
        # A heading path longer than half a chunk would crowd out the text.
        if len(prefix) > size // 2:
            prefix = prefix[: size // 2].rsplit(" ", 1)[0] + "\n"
        for piece in _pieces(body, size - len(prefix), min(overlap, (size - len(prefix)) // 2)):
            chunks.append(Chunk(len(chunks), prefix + piece, heading))
    return chunks
