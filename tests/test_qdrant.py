"""The retrieval store's connection: embedded local mode by default, a server
with API key and HTTPS from the QDRANT_* settings, and the guide's checklist."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
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


@pytest.mark.parametrize(
    ("env", "want"),
    [
        (
            {
                "QDRANT_HOST": "qdrant.internal",
                "QDRANT_PORT": "7333",
                "QDRANT_GRPC_PORT": "7334",
                "QDRANT_TIMEOUT": "9",
            },
            ("http", "qdrant.internal", 7333, 7334, 9, False, None),
        ),
        (
            {
                "QDRANT_URL": "https://q.example:8333",
                "QDRANT_GRPC_PORT": "8334",
                "QDRANT_API_KEY": "k",
                "QDRANT_PREFER_GRPC": "true",
            },
            ("https", "q.example", 8333, 8334, 60, True, "k"),
        ),
    ],
    ids=["host", "url"],
)
def test_every_server_setting_reaches_the_client(env: dict[str, str], want: tuple) -> None:
    remote = qdrant.connect(from_env(QdrantSettings, env), check_version=False)._client
    got = (
        remote._scheme,
        remote._host,
        remote._port,
        remote._grpc_port,
        remote._timeout,
        remote._prefer_grpc,
        remote._api_key,
    )
    assert got == want


def test_a_gateway_facing_a_closed_port_says_so_in_one_line(start_gateway, tmp_path):
    port = str(free_port())  # nothing listens there
    gw = start_gateway(QDRANT_HOST="127.0.0.1", QDRANT_PORT=port, QDRANT_TIMEOUT="2")
    lines = [ln for ln in gw.output().splitlines() if "unreachable" in ln]
    assert len(lines) == 1 and '"level": "ERROR"' in lines[0], gw.output()
    assert f"http://127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in gw.output() and "UserWarning" not in gw.output()
    # Chat and health do not depend on the store.
    assert httpx.get(gw.url + "/health", timeout=10).status_code == 200


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
    # One line saying where and why, not a traceback.
    assert len(down.stdout.strip().splitlines()) == 1 and "Traceback" not in down.stderr
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
