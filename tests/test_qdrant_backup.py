"""ops/backup/qdrant_backup.py on the embedded store: refused while a
gateway holds the path; a backup taken with the gateway stopped restores
a collection deleted after it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import ROOT
from tests.test_retrieval import WORKER, api, load, retrieval_env, search

SCRIPT = ROOT / "ops" / "backup" / "qdrant_backup.py"


def run(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QDRANT_PATH": str(tmp_path / "qdrant"), "QDRANT_HOST": ""}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_backup_and_restore_embedded(start_gateway, start_worker, tmp_path, services):
    start_worker(**WORKER)
    gw = start_gateway(**retrieval_env(tmp_path))
    load(gw)
    busy = run(tmp_path, "backup", "--dest", str(tmp_path / "bk"))
    assert busy.returncode == 2 and "running gateway" in busy.stderr
    assert busy.stderr.count("\n") == 1  # one line

    gw.stop()
    services.remove(gw)
    done = run(tmp_path, "backup", "--dest", str(tmp_path / "bk"))
    assert done.returncode == 0, done.stderr
    [archive] = list((tmp_path / "bk").glob("qdrant-*.tar.gz"))

    gw = start_gateway(**retrieval_env(tmp_path))
    assert api(gw, "DELETE", "/collections/docs").status_code == 200
    gw.stop()
    services.remove(gw)
    restored = run(tmp_path, "restore", str(archive))
    assert restored.returncode == 0, restored.stderr

    gw = start_gateway(**retrieval_env(tmp_path))
    assert api(gw, "GET", "/collections/docs").json()["points"] == 3
    assert search(gw, "capital of Germany", top_k=1).json()["data"][0]["document_id"] == "berlin"
