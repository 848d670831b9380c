"""The Kubernetes manifests (`ops/k8s/`): every document parses and passes
the Kubernetes API schemas, kustomize builds the set, and what the objects
say agrees with the code: probes on the ports the processes listen on,
environment names the settings really read, a grace period above the
worker's drain, and every Secret and ConfigMap key they reference exists."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tests.harness import PYTHON, ROOT
from tests.test_ops_files import exported_names, metric_names, missing_tool

K8S = ROOT / "ops" / "k8s"
# The prometheus-adapter values and the kustomization are not API objects.
NOT_OBJECTS = {"kustomization.yaml", "prometheus-adapter-rules.yaml"}
# Variables of programs other than ours that the manifests set.
FOREIGN_ENV = {
    "REDIS_PASSWORD",  # expanded by Kubernetes into redis-server's --requirepass
    "REDISCLI_AUTH",  # redis-cli's password variable, for the Redis probes
}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_OBJECTS)


def objects() -> list[dict[str, Any]]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return c


def env_value(c: dict[str, Any], name: str) -> str:
    (value,) = [e["value"] for e in c["env"] if e["name"] == name]
    return value


def settings_env_names() -> set[str]:
    """Every settings struct's fields as env names (from_env upper-cases
    field names), found by scanning the source for `class ...Settings`, plus
    the few variables the code reads from os.environ directly."""
    names: set[str] = set()
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "streamworker").rglob("*.py")]:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Settings"):
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                cls = getattr(importlib.import_module(module), node.name)
                if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
                    names |= {f.upper() for f in cls.__struct_fields__}
        names |= set(
            re.findall(
                r"""(?:environ(?:\.get)?[(\[]|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""", source
            )
        )
    return names


def test_settings_scan_finds_the_known_structs() -> None:
    names = settings_env_names()
    for expected in ("REDIS_URL", "JOB_LEASE_SECONDS", "GATEWAY_PORT", "WORKER_CONCURRENCY"):
        assert expected in names
    assert "LOG_LEVEL" in names  # read from os.environ by the log set-up
    assert "WORKER_CONCURENCY" not in names  # a typo is not a setting


def env_names(c: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> Iterator[str]:
    for e in c.get("env", []):
        yield e["name"]
    for source in c.get("envFrom", []):
        yield from configmaps[source["configMapRef"]["name"]]


def test_every_manifest_parses_with_the_expected_kinds() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects())
    assert kinds == sorted(
        [
            ("Namespace", "streamworker"),
            ("ConfigMap", "streamworker-config"),
            ("ConfigMap", "redis-config"),
            ("Secret", "streamworker-secrets"),
            ("Service", "redis"),
            ("StatefulSet", "redis"),
            ("Deployment", "gateway"),
            ("Service", "gateway"),
            ("PodDisruptionBudget", "gateway"),
            ("Ingress", "gateway"),
            ("Deployment", "worker"),
            ("PersistentVolumeClaim", "models"),
            ("PodDisruptionBudget", "worker"),
            ("HorizontalPodAutoscaler", "worker"),
            ("NetworkPolicy", "redis"),
            ("NetworkPolicy", "worker"),
            ("NetworkPolicy", "gateway"),
        ]
    )
    for o in objects():
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "streamworker", o["metadata"]["name"]


def test_manifests_pass_the_kubernetes_schemas() -> None:
    tool = shutil.which("kubernetes-validate") or str(Path(PYTHON).parent / "kubernetes-validate")
    if not Path(tool).exists():
        pytest.fail("kubernetes-validate missing: it is a dev extra (pip install -e '.[dev]')")
    out = subprocess.run(
        [tool, "--strict", "--kubernetes-version", "1.30.0", *map(str, manifest_files())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout


def test_kustomize_builds_the_set_without_the_example_secret() -> None:
    if not shutil.which("kubectl"):
        missing_tool("kubectl is not installed (sh ops/dev.sh test installs it)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0 and "unknown command" in out.stderr:
        missing_tool("this kubectl has no kustomize")
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in built} >= {"Deployment", "StatefulSet", "Ingress", "Service"}
    assert "Secret" not in {d["kind"] for d in built}  # placeholders never reach a cluster


def test_gateway_probes_ports_and_ingress() -> None:
    deploy = one("Deployment", "gateway")
    c = container(deploy)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env_value(c, "GATEWAY_PORT"))
    assert env_value(c, "GATEWAY_HOST") == "0.0.0.0"  # reachable from the Service
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["lifecycle"]["preStop"]
    service = one("Service", "gateway")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] in ports
    ingress = one("Ingress", "gateway")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-buffering"] == "off"  # SSE arrives token by token
    timeout = float(one("ConfigMap", "streamworker-config")["data"]["JOB_TIMEOUT_SECONDS"])
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[prefix + name]) > timeout  # a silent non-streamed job may take this long
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "gateway"
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    pdb = one("PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]


def test_worker_gpu_drain_and_disruption_budget() -> None:
    from streamworker.settings import WorkerSettings

    deploy = one("Deployment", "worker")
    spec = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    grace = float(env_value(c, "WORKER_SHUTDOWN_GRACE_SECONDS"))
    assert grace == WorkerSettings().worker_shutdown_grace_seconds
    # Time to drain, then to hand back what is left, before Kubernetes kills it.
    assert spec["terminationGracePeriodSeconds"] >= grace + 10
    assert "kill -TERM 1" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    metrics_port = int(env_value(c, "WORKER_METRICS_PORT"))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": metrics_port}
    assert env_value(c, "WORKER_METRICS_HOST") == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    pdb = one("PodDisruptionBudget", "worker")
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1  # never blocks a drain with one replica


def test_hpa_scales_workers_on_queue_depth_per_slot() -> None:
    hpa = one("HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "worker",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    assert rule["name"]["as"] == name
    query = re.sub(r"<<[^>]*>>", "", rule["metricsQuery"])
    used = metric_names(query) - {"max", "clamp_min", "namespace"}
    assert used == {"proxy_queued_jobs", "proxy_capacity"} and used <= exported_names()


def test_redis_statefulset_uses_the_projects_config() -> None:
    config = one("ConfigMap", "redis-config")
    assert config["data"]["redis.conf"] == (ROOT / "redis.conf").read_text()
    sts = one("StatefulSet", "redis")
    c = container(sts)
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"][0] == mount["config"] + "/redis.conf"
    assert c["args"][c["args"].index("--dir") + 1] == mount["data"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "redis-config"
    assert one("Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_network_policies_select_real_pods_and_ports() -> None:
    redis = one("NetworkPolicy", "redis")["spec"]
    assert redis["podSelector"] == one("StatefulSet", "redis")["spec"]["selector"]
    (rule,) = redis["ingress"]
    allowed = [peer["podSelector"] for peer in rule["from"]]
    assert allowed == [
        one("Deployment", name)["spec"]["selector"] for name in ("gateway", "worker")
    ]
    assert rule["ports"] == [{"port": 6379}]
    for name in ("gateway", "worker"):
        policy = one("NetworkPolicy", name)["spec"]
        assert policy["podSelector"] == one("Deployment", name)["spec"]["selector"]
        ports = [p["containerPort"] for p in container(one("Deployment", name))["ports"]]
        assert [p["port"] for r in policy["ingress"] for p in r["ports"]] == ports


def test_env_names_are_settings_the_code_reads() -> None:
    known = settings_env_names()
    configmaps = {o["metadata"]["name"]: o["data"] for o in objects() if o["kind"] == "ConfigMap"}
    for name in ("gateway", "worker"):
        c = container(one("Deployment", name))
        unknown = set(env_names(c, configmaps)) - known
        assert not unknown, f"{name}: {sorted(unknown)} are read by no settings struct"
    redis = container(one("StatefulSet", "redis"))
    assert set(env_names(redis, configmaps)) <= FOREIGN_ENV


def test_every_referenced_secret_and_configmap_key_exists() -> None:
    secrets = {
        o["metadata"]["name"]: {**o.get("stringData", {}), **o.get("data", {})}
        for o in objects()
        if o["kind"] == "Secret"
    }
    configmaps = {o["metadata"]["name"]: o["data"] for o in objects() if o["kind"] == "ConfigMap"}
    refs = 0
    for o in objects():
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = o["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for e in c.get("env", []):
                source = e.get("valueFrom", {})
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    assert ref["key"] in secrets[ref["name"]], (o["metadata"]["name"], ref)
                    refs += 1
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    assert ref["key"] in configmaps[ref["name"]], (o["metadata"]["name"], ref)
                    refs += 1
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
                refs += 1
        for v in pod.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
                refs += 1
    assert refs >= 8
