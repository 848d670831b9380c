"""The ops files, checked without Docker: YAML that loads and says what the
deployment needs, alert rules exactly as the original proxy's guide wrote them and unit-tested with
promtool, an nginx config that nginx accepts and that really streams and
rate-limits in front of a real gateway, systemd units that systemd accepts."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from prometheus_client.metrics_core import Metric

from gateway.metrics import GatewayMetrics
from streamworker.metrics import WorkerMetrics
from tests.harness import PYTHON, ROOT, free_port, wait_for

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
    worker = WorkerMetrics()
    worker.watch_engine(SimpleNamespace(queried=0, reused=0, prefilled=0))
    for registry in (GatewayMetrics().registry, worker.registry):
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


# The deployment guide's load profiles: worker replicas, WORKER_CONCURRENCY,
# the Redis container's memory limit.
PROFILES = {"small": (1, "1", "1G"), "medium": (2, "3", "4G"), "high": (3, "5", "8G")}
SIZES = {"mb": 1 << 20, "gb": 1 << 30, "M": 1 << 20, "G": 1 << 30}


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]+)", size).groups()  # type: ignore[union-attr]
    return int(number) * SIZES[unit]


def _compose_config(*overrides: str) -> dict:
    """`docker-compose config` of compose.yaml plus override files: what
    Docker Compose itself makes of the combination."""
    if not shutil.which("docker-compose"):
        missing_tool("docker-compose not installed (Debian package docker-compose)")
    files = ["compose.yaml", *(f"ops/compose/{name}.yaml" for name in overrides)]
    out = subprocess.run(
        ["docker-compose", *(a for f in files for a in ("-f", f)), "--profile", "worker", "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "API_KEY": "test"},
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.mark.parametrize("fluentd", [False, True], ids=["plain", "fluentd"])
@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_compose_profiles_and_log_shipping(profile: str | None, fluentd: bool) -> None:
    overrides = [p for p in (profile, "fluentd" if fluentd else None) if p]
    services = _compose_config(*overrides)["services"]
    worker, redis = services["worker"], services["redis"]
    if profile:
        replicas, concurrency, memory = PROFILES[profile]
        assert worker["deploy"]["replicas"] == replicas
        assert worker["environment"]["WORKER_CONCURRENCY"] == concurrency
        assert redis["deploy"]["resources"]["limits"]["memory"] == memory
        # Redis refuses writes (noeviction) before the container limit kills it.
        maxmemory = redis["command"][redis["command"].index("--maxmemory") + 1]
        assert _bytes(maxmemory) < _bytes(memory)
        assert redis["command"][1] == "/usr/local/etc/redis/redis.conf"
        if replicas > 1:  # replicas cannot share one pinned name
            assert worker["environment"]["WORKER_NAME"] == ""
            # More than one slot needs an engine that decodes several sequences.
            assert worker["environment"]["ENGINE"] == "batched"
    for name in ("gateway", "worker", "redis"):
        logging = services[name].get("logging")
        if fluentd:
            assert logging["driver"] == "fluentd"
            assert logging["options"]["fluentd-address"] == "localhost:24224"
            assert logging["options"]["fluentd-async"] == "true"
        else:
            assert logging is None


def test_compose_healthchecks_and_every_worker_replica_scraped(tmp_path: Path) -> None:
    services = load(ROOT / "compose.yaml")["services"]
    without = {name for name, svc in services.items() if "healthcheck" not in svc}
    assert without == {"redis-exporter"}  # a scratch image: nothing to run a check with
    config = load(OPS / "prometheus" / "prometheus.yml")
    (worker,) = [c for c in config["scrape_configs"] if c["job_name"] == "streamworker-worker"]
    # Replicas share one service name: only a DNS lookup finds them all.
    assert worker["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": 5345}]
    if not shutil.which("promtool"):
        missing_tool("promtool not installed (Debian package prometheus)")
    shutil.copy(OPS / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    text = (OPS / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/alerts.yml", str(tmp_path / "alerts.yml"))
    )
    out = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    guide = [".git", ".env", ".env.*", "__pycache__", "*.pyc", ".venv", "*.md", "tests/", "docs/"]
    assert set(guide) <= set(ignored)
    assert {"models/", "*.gguf"} <= set(ignored)  # weights are mounted, never sent to the daemon
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [
        src
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    ]
    assert {"pyproject.toml", "redis.conf", "streamworker", "gateway"} <= set(copied)
    for src in copied:
        for pattern in ignored:
            assert not fnmatch.fnmatch(src, pattern.rstrip("/")), (src, pattern)


def test_dockerfile_healthcheck_probes_a_real_gateway(echo_stack) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK (.*?)\\\n\s*CMD (\[.*\])$", dockerfile, re.M)
    assert match, "HEALTHCHECK ... CMD [exec form] missing"
    assert "--start-period=" in match[1]
    command = json.loads(match[2])
    assert command[0] == "python"
    assert re.search(r"^USER \d+$", dockerfile, re.M)  # numeric: runAsNonRoot can check it
    default = re.search(r"^ENV HEALTHCHECK_URL=(\S+)$", dockerfile, re.M)[1]  # type: ignore[index]
    assert default == "http://127.0.0.1:8080/health"  # GATEWAY_PORT's default
    gateway, _ = echo_stack
    # The same command Docker runs, with this venv's python: healthy while
    # the gateway serves, unhealthy (non-zero) when nothing listens.
    for url, healthy in (
        (gateway.url + "/health", True),
        (f"http://127.0.0.1:{free_port()}/health", False),
    ):
        out = subprocess.run(
            [PYTHON, *command[1:]],
            env={**os.environ, "HEALTHCHECK_URL": url},
            capture_output=True,
            timeout=30,
        )
        assert (out.returncode == 0) is healthy, out.stderr


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


HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "CapabilityBoundingSet=\n",
    "SystemCallFilter=@system-service",
)


def _directives(text: str) -> dict[str, list[str]]:
    """Every `Key=value` line of a unit, by key (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_systemd_units() -> None:
    worker_text = (OPS / "systemd" / "streamworker@.service").read_text()
    worker = _directives(worker_text)
    for key, value in (
        ("Environment", "CUDA_VISIBLE_DEVICES=%i"),
        ("Environment", "WORKER_INSTANCE=%i"),
        ("Environment", "CUDA_DEVICE_ORDER=PCI_BUS_ID"),
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "always"),
        ("RestartPreventExitStatus", "2"),
        ("EnvironmentFile", "/etc/streamworker/worker.env"),
        ("ReadWritePaths", "-/srv/streamworker/models"),
    ):
        assert value in worker[key], key
    # Longer than the worker's drain (WORKER_SHUTDOWN_GRACE_SECONDS, 25 s).
    assert int(worker["TimeoutStopSec"][0]) > 25
    assert int(worker["WatchdogSec"][0]) > 0 and worker["MemoryMax"]
    gateway_text = (OPS / "systemd" / "streamworker-gateway.service").read_text()
    gateway = _directives(gateway_text)
    assert gateway["ExecStart"] == ["/opt/streamworker/.venv/bin/python -m gateway"]
    assert gateway["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the rolling restart
    assert gateway["Type"] == ["notify"] and gateway["KillMode"] == ["mixed"]
    assert gateway["Restart"] == ["always"] and gateway["EnvironmentFile"]
    # Above the processes' grace (GATEWAY_SHUTDOWN_GRACE_SECONDS, 25 s) plus
    # the 10 s the supervisor waits before it kills one.
    assert int(gateway["TimeoutStopSec"][0]) > 35
    assert int(gateway["WatchdogSec"][0]) > 0 and gateway["MemoryMax"]
    for text in (worker_text, gateway_text):
        for line in HARDENING:
            assert line in text, line


def _units_here(tmp_path: Path) -> list[Path]:
    python = str(ROOT / ".venv" / "bin" / "python")
    units = []
    for name, as_name in (
        ("streamworker@.service", "streamworker@0.service"),
        ("streamworker-gateway.service", "streamworker-gateway.service"),
    ):
        text = (OPS / "systemd" / name).read_text()
        # Point ExecStart at this checkout's interpreter: verify checks it exists.
        (tmp_path / as_name).write_text(text.replace("/opt/streamworker/.venv/bin/python", python))
        units.append(tmp_path / as_name)
    return units


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        missing_tool("systemd-analyze not installed")
    units = [str(u) for u in _units_here(tmp_path)]
    out = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_analyze_security_matches_the_docs(tmp_path: Path) -> None:
    """The exposure scores systemd gives the units are the ones
    docs/operations.md reports, and both are low."""
    if not shutil.which("systemd-analyze"):
        missing_tool("systemd-analyze not installed")
    docs = (ROOT / "docs" / "operations.md").read_text()
    for unit in _units_here(tmp_path):
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out.stdout)
        assert found, out.stdout[-2000:] + out.stderr
        score = float(found[1])
        assert score <= 2.0 and found[2] == "OK", (unit.name, score)
        shown = unit.name.replace("@0", "@")
        assert f"`{shown}` | {score:.1f} OK" in docs, (shown, score)
