"""`python -m streamworker ingest PATH... --collection NAME`: files into a
collection, through the gateway's documents API.

The gateway owns the vector store (an embedded Qdrant path is locked to one
process), so this command never opens it: it reads .txt, .md and .pdf files
(folders are walked), sends each as one document whose id is its path, and
lets the gateway chunk, embed (on the workers) and write it. Sending a file
again replaces its chunks. A file that cannot be read is listed and
skipped; a full queue (429) or a gateway restart (503) is waited out.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Iterable

SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".pdf": "text"}
RETRIES = 30


class GatewayError(Exception):
    pass


@dataclass
class Summary:
    files: int = 0
    chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def collect(paths: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to send, and (path, why) for those passed over."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
            )
        elif path.is_file():
            if path.suffix.lower() in SUFFIXES:
                files.append(path)
            else:
                skipped.append((raw, f"unsupported type {path.suffix or '(none)'}"))
        else:
            skipped.append((raw, "no such file or folder"))
    return files, skipped


def read_text(path: Path) -> str:
    """The file's text; raises ValueError with a short reason when there is none."""
    try:
        if path.suffix.lower() == ".pdf":
            from pypdf import PdfReader

            # A broken file is reported once, in the summary, not as warnings.
            logging.getLogger("pypdf").setLevel(logging.CRITICAL)
            reader = PdfReader(str(path))
            text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except Exception as exc:  # pypdf raises many kinds for a broken file
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    if not text.strip():
        raise ValueError("no text")
    return text


def _progress(done: int, total: int, chunks: int, name: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r[{bar}] {done}/{total} files, {chunks} chunks  {name[-40:]:<40}")
    sys.stderr.flush()


class Ingest:
    def __init__(self, session: aiohttp.ClientSession, base: str, collection: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.collection = collection

    async def _call(self, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
        for _ in range(RETRIES):
            async with self.session.request(method, self.base + path, json=body) as resp:
                if resp.status in (429, 503):
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                data = await resp.json(content_type=None)
                return resp.status, data if isinstance(data, dict) else {}
        raise GatewayError(f"{method} {path}: the gateway stayed busy")

    async def ensure_collection(self) -> None:
        name = quote(self.collection, safe="")
        status, _ = await self._call("GET", f"/collections/{name}")
        if status == 200:
            return
        status, data = await self._call("POST", "/collections", {"name": self.collection})
        if status not in (201, 409):
            raise GatewayError(_message(data) or f"creating the collection: HTTP {status}")

    async def send(self, doc_id: str, text: str, fmt: str, metadata: dict) -> int:
        path = f"/collections/{quote(self.collection, safe='')}/documents/{quote(doc_id)}"
        status, data = await self._call(
            "PUT", path, {"text": text, "format": fmt, "metadata": metadata}
        )
        if status != 200:
            raise ValueError(_message(data) or f"HTTP {status}")
        return int(data.get("chunks", 0))


def _message(data: dict) -> str:
    error = data.get("error")
    return str(error.get("message", "")) if isinstance(error, dict) else ""


async def ingest(
    paths: list[str], collection: str, url: str, api_key: str | None, prefix: str = "/api/v1"
) -> tuple[Summary, float]:
    files, skipped = collect(paths)
    summary = Summary(skipped=skipped)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=3600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        client = Ingest(session, url.rstrip("/") + prefix, collection)
        await client.ensure_collection()
        for i, path in enumerate(files):
            _progress(i, len(files), summary.chunks, str(path))
            try:
                text = read_text(path)
                metadata = {"source": str(path), "filename": path.name, "type": path.suffix[1:]}
                summary.chunks += await client.send(
                    path.as_posix(), text, SUFFIXES[path.suffix.lower()], metadata
                )
                summary.files += 1
            except ValueError as exc:
                summary.skipped.append((str(path), str(exc)))
        _progress(len(files), len(files), summary.chunks, "")
        sys.stderr.write("\n")
    return summary, time.monotonic() - t0


def main(
    paths: list[str], collection: str, url: str, api_key: str | None, *, prefix: str = "/api/v1"
) -> int:
    """Exit 0 when every readable file went in (unreadable ones are listed),
    1 when the gateway refused or could not be reached."""
    try:
        summary, seconds = asyncio.run(ingest(paths, collection, url, api_key, prefix))
    except (GatewayError, aiohttp.ClientError, OSError) as exc:
        sys.stderr.write(f"\ningest: {exc}\n")
        return 1
    print(
        f"ingested {summary.files} file(s), {summary.chunks} chunk(s) into "
        f"'{collection}' in {seconds:.1f}s; {len(summary.skipped)} skipped"
    )
    for path, why in summary.skipped:
        print(f"  skipped {path}: {why}")
    return 0
