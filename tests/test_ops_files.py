"""The ops files, checked without Docker: YAML that loads and says what the
deployment needs, alert rules exactly as the original proxy's guide wrote them and unit-tested with
promtool, an nginx config that nginx accepts and that really streams and
rate-limits in front of a real gateway, systemd units that systemd accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.metrics_core import Metric

from gateway.metrics import GatewayMetrics
from streamworker.metrics import WorkerMetrics
from tests.harness import ROOT, free_port, wait_for

OPS = ROOT / "ops"

# The original Ollama proxy guide's alert rules ("AlertManager правила"), word for word.
SEED_RULES = [
    {
        "alert": "HighUtilization",
        "expr": "proxy_active_jobs / proxy_capacity > 0.9",
        "for": "5m",
        "annotations": {"summary": "Proxy at 90%+ capacity"},
    },
    {
        "alert": "QueueBuildup",
        "expr": "proxy_queued_jobs > proxy_capacity",
        "for": "2m",
        "annotations": {"summary": "Queue size exceeds capacity"},
    },
    {
        "alert": "HighRejectionRate",
        "expr": 'rate(http_requests_total{code="429"}[5m]) > 10',
        "for": "1m",
        "annotations": {"summary": "High rate of 429 responses"},
    },
]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def exported_names() -> set[str]:
    """Every series name the gateway and the worker can export."""
    names: set[str] = set()
    for registry in (GatewayMetrics().registry, WorkerMetrics().registry):
        for family in registry.collect():
            assert isinstance(family, Metric)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, ranges,
    `by (...)` and function names removed)."""
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\bby\s*\([^)]*\)", " ", expr)
    return {
        m for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr) if not m.isdigit()
    } - {"e"}


def missing_tool(why: str) -> None:
    """Off CI, a missing checker skips; in CI (where `sh ops/dev.sh test`
    installs them) it is a failure, never a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def test_compose_file() -> None:
    compose = load(ROOT / "compose.yaml")
    services = compose["services"]
    assert {"redis", "gateway", "worker", "prometheus", "grafana"} <= set(services)
    assert compose["networks"]["backend"]["internal"] is True
    assert set(services["gateway"]["networks"]) == {"frontend", "backend"}
    assert services["worker"]["networks"] == ["backend"]
    assert services["redis"]["networks"] == ["backend"]
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker"]["profiles"] == ["worker"]  # started with --profile worker
    assert services["worker"]["environment"]["WORKER_CONCURRENCY"] == "auto"
    assert "18080:8080" in services["gateway"]["ports"]  # the port the guide's curl examples use
    # Docker Compose itself parses it (the v1 CLI can; no daemon needed).
    if shutil.which("docker-compose"):
        env = {**os.environ, "API_KEY": "test"}
        subprocess.run(
            [
                "docker-compose",
                "-f",
                str(ROOT / "compose.yaml"),
                "--profile",
                "worker",
                "config",
                "-q",
            ],
            check=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )


def test_alert_rules_are_the_seeds_and_use_exported_names() -> None:
    groups = load(OPS / "prometheus" / "alerts.yml")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    by_name = {r["alert"]: r for r in rules}
    for seed in SEED_RULES:
        assert by_name[seed["alert"]] == seed
    assert {"WorkerDown", "JobsDeadLettered"} <= set(by_name)
    known = exported_names() | {"up"}
    for rule in rules:
        assert metric_names(rule["expr"]) <= known, rule["alert"]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    if not shutil.which("promtool"):
        missing_tool("promtool not installed (Debian package prometheus)")
    subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"],
        cwd=OPS / "prometheus",
        check=True,
        capture_output=True,
        timeout=60,
    )
    out = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=OPS / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_config_and_dashboard() -> None:
    config = load(OPS / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert {"streamworker-gateway", "streamworker-worker"} <= jobs  # WorkerDown's job label
    dashboard = json.loads((OPS / "grafana" / "dashboards" / "streamworker.json").read_text())
    known = exported_names() | {"redis_memory_used_bytes"}  # from redis-exporter
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        assert metric_names(expr) - {"histogram_quantile"} <= known, expr


def _nginx_conf(tmp: Path, gateway_port: int, listen: int) -> Path:
    """The shipped config, with a throwaway certificate, a local port and the
    test gateway as upstream; everything else as shipped."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(tmp / "key.pem"),
            "-out",
            str(tmp / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    conf = (OPS / "nginx" / "streamworker.conf").read_text()
    for old, new in (
        ("/etc/ssl/certs/cert.pem", str(tmp / "cert.pem")),
        ("/etc/ssl/private/key.pem", str(tmp / "key.pem")),
        ("listen 443 ssl", f"listen 127.0.0.1:{listen} ssl"),
        ("server 127.0.0.1:8080", f"server 127.0.0.1:{gateway_port}"),
    ):
        assert old in conf
        conf = conf.replace(old, new)
    (tmp / "streamworker.conf").write_text(conf)
    main = tmp / "nginx.conf"
    main.write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\ndaemon off;\n"
        f"events {{}}\nhttp {{\n  access_log off;\n"
        f"  include {tmp}/streamworker.conf;\n}}\n"
    )
    return main


def test_nginx_config_streams_and_rate_limits(tmp_path: Path, echo_stack) -> None:
    conf = (OPS / "nginx" / "streamworker.conf").read_text()
    for directive in (
        "proxy_buffering off;",
        "least_conn;",
        "rate=10r/s",
        "burst=20 nodelay",
        "limit_req_status 429;",
        "proxy_read_timeout",
    ):
        assert directive in conf
    if not shutil.which("nginx"):
        missing_tool("nginx not installed (Debian package nginx-light)")
    gateway, _ = echo_stack
    port = free_port()
    main = _nginx_conf(tmp_path, gateway.port, port)
    subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(main)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(main)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, verify=False, timeout=30) as client:
            wait_for(lambda: client.get("/health").status_code == 200, what="nginx")
            # A stream through nginx arrives as SSE, ending in [DONE].
            with client.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "echo-test",
                    "max_tokens": 3,
                    "stream": True,
                    "messages": [{"role": "user", "content": "via nginx"}],
                },
            ) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                lines = [line for line in resp.iter_lines() if line]
            assert lines[-1] == "data: [DONE]" and any('"via ' in line for line in lines)
            # Far past 10 r/s with a burst of 20: refusals are 429 + Retry-After.
            codes = [client.get("/v1/models") for _ in range(60)]
            limited = [r for r in codes if r.status_code == 429]
            assert limited and all(r.status_code in (200, 429) for r in codes)
            assert limited[0].headers["Retry-After"] == "1"
            assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        proc.terminate()
        proc.wait(10)


def test_systemd_units() -> None:
    worker = (OPS / "systemd" / "streamworker@.service").read_text()
    for line in (
        "Environment=CUDA_VISIBLE_DEVICES=%i",
        "Environment=WORKER_INSTANCE=%i",
        "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
    ):
        assert line in worker
    # Longer than the worker's drain (WORKER_SHUTDOWN_GRACE_SECONDS, 25 s).
    assert int(re.search(r"TimeoutStopSec=(\d+)", worker)[1]) > 25  # type: ignore[index]
    gateway = (OPS / "systemd" / "streamworker-gateway.service").read_text()
    assert "ExecStart=/opt/streamworker/.venv/bin/python -m gateway" in gateway


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        missing_tool("systemd-analyze not installed")
    python = str(ROOT / ".venv" / "bin" / "python")
    units = []
    for name, as_name in (
        ("streamworker@.service", "streamworker@0.service"),
        ("streamworker-gateway.service", "streamworker-gateway.service"),
    ):
        text = (OPS / "systemd" / name).read_text()
        # Point ExecStart at this checkout's interpreter: verify checks it exists.
        (tmp_path / as_name).write_text(text.replace("/opt/streamworker/.venv/bin/python", python))
        units.append(str(tmp_path / as_name))
    out = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
