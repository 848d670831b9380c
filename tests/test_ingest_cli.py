"""`python -m streamworker ingest`: .txt, .md and a PDF made here go in
through the gateway's documents API; unreadable files are listed and
skipped; sending the files again replaces, never duplicates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import ROOT
from tests.test_retrieval import MODEL, WORKER, retrieval_env


def make_pdf(path: Path, lines: list[str]) -> None:
    """A one-page PDF with `lines` of text in Helvetica, written by hand so
    the test needs no PDF writer: objects, a content stream, the xref."""
    text = "".join(f"({line}) Tj T* " for line in lines)
    stream = f"BT /F1 12 Tf 14 TL 72 720 Td {text}ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))


def ingest(gw_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamworker", "ingest", *args, "--url", gw_url],
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},  # never used by ingest
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_ingest_files_and_folders(start_gateway, start_worker, tmp_path):
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path))
    files = tmp_path / "corpus"
    (files / "sub").mkdir(parents=True)
    (files / "volcano.txt").write_text("Mauna Loa on Hawaii is the largest active volcano.")
    (files / "sub" / "guide.md").write_text(
        "# Rivers\nThe Nile flows north.\n\n## Amazon\nThe Amazon carries the most water.\n"
    )
    make_pdf(files / "desert.pdf", ["The Atacama in Chile is the driest", "desert on Earth."])
    (files / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (files / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (files / "notes.docx").write_bytes(b"PK")  # in a folder: not ours, not listed

    done = ingest(gw.url, str(files), str(tmp_path / "missing.txt"), "--collection", "kb")
    assert done.returncode == 0, done.stderr
    assert "ingested 3 file(s)" in done.stdout and "3 skipped" in done.stdout
    assert "broken.pdf" in done.stdout and "latin1.txt: not UTF-8 text" in done.stdout
    assert "missing.txt: no such file or folder" in done.stdout
    assert "[##############################] 5/5 files" in done.stderr  # the progress bar

    def find(query: str) -> dict:
        r = httpx.post(
            gw.url + "/api/v1/search",
            json={"collection": "kb", "query": query, "top_k": 1},
            timeout=60,
        )
        return r.json()["data"][0]

    hit = find("Which desert is the driest?")
    assert hit["document_id"].endswith("desert.pdf") and "Atacama" in hit["text"]
    assert hit["metadata"]["type"] == "pdf"
    amazon = find("Which river carries the most water?")
    assert amazon["text"].startswith("Rivers > Amazon\n")  # the heading stays with its section
    points = httpx.get(gw.url + "/api/v1/collections/kb", timeout=10).json()["points"]

    again = ingest(gw.url, str(files), "--collection", "kb")
    assert again.returncode == 0 and "ingested 3 file(s)" in again.stdout
    assert httpx.get(gw.url + "/api/v1/collections/kb", timeout=10).json()["points"] == points

    down = ingest("http://127.0.0.1:9", str(files), "--collection", "kb")
    assert down.returncode == 1 and "ingest:" in down.stderr


def test_ingest_needs_a_collection():
    bad = subprocess.run(
        [sys.executable, "-m", "streamworker", "ingest", "x.txt"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--collection" in bad.stderr
    assert MODEL
