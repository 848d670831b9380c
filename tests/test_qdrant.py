"""The retrieval store's connection: embedded local mode by default, a server
with API key and HTTPS from the QDRANT_* settings, and the guide's checklist."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from qdrant_client.models import Distance, VectorParams

from streamworker import qdrant
from streamworker.protocol.settings import from_env
from streamworker.settings import QdrantSettings
from tests.harness import ROOT, free_port


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_embedded_mode_by_default(tmp_path):
    settings = from_env(QdrantSettings, {"QDRANT_PATH": str(tmp_path / "q")})
    client = qdrant.connect(settings)
    await client.create_collection("docs", VectorParams(size=4, distance=Distance.COSINE))
    st = await qdrant.status(settings, client)
    await client.close()
    assert st.mode == "embedded" and st.collections == ["docs"] and st.problems == []
    # Persisted on disk: a new client on the same path sees the collection.
    again = await qdrant.status(settings)
    assert again.collections == ["docs"]


def test_server_settings_carry_key_and_https():
    settings = from_env(
        QdrantSettings,
        {
            "QDRANT_HOST": "qdrant.internal",
            "QDRANT_PORT": "6333",
            "QDRANT_API_KEY": "s3cret",
            "QDRANT_HTTPS": "true",
            "QDRANT_PREFER_GRPC": "true",
            "QDRANT_TIMEOUT": "60.0",
        },
    )
    client = qdrant.connect(settings, check_version=False)  # no server here to ask
    remote = client._client
    assert remote.rest_uri == "https://qdrant.internal:6333"
    assert remote._rest_headers["api-key"] == "s3cret"
    assert remote._prefer_grpc is True
    assert qdrant.checklist(settings) == []
    assert "s3cret" not in repr(settings)


def test_checklist_flags_an_open_remote():
    settings = from_env(QdrantSettings, {"QDRANT_HOST": "qdrant.internal"})
    assert qdrant.checklist(settings) == [
        "QDRANT_API_KEY is not set for a remote Qdrant",
        "QDRANT_HTTPS is not true for a remote Qdrant",
    ]


def _cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamworker", "qdrant"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_cli_check(tmp_path):
    ok = _cli({"QDRANT_PATH": str(tmp_path / "cli")})
    assert ok.returncode == 0 and "embedded" in ok.stdout
    port = str(free_port())  # nothing listens there
    down = _cli({"QDRANT_HOST": "127.0.0.1", "QDRANT_PORT": port, "QDRANT_TIMEOUT": "2"})
    assert down.returncode == 1 and "unreachable" in down.stdout
    prod = _cli(
        {
            "QDRANT_HOST": "127.0.0.1",
            "QDRANT_PORT": port,
            "QDRANT_TIMEOUT": "2",
            "ENVIRONMENT": "production",
        }
    )
    assert prod.returncode == 1  # unreachable comes first
    bad = _cli({"QDRANT_PORT": "0"})
    assert bad.returncode == 2 and "QDRANT_PORT" in bad.stderr
