"""Settings: typed, from env, a clear message naming the variable on a bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.settings import GatewaySettings
from streamworker.protocol.settings import QueueSettings, SettingsError, from_env
from streamworker.settings import EngineSettings, WorkerSettings
from tests.harness import ROOT


def test_env_names_follow_the_fields():
    s = from_env(WorkerSettings, {"WORKER_CONCURRENCY": "4", "WORKER_METRICS_PORT": "9000"})
    assert s.worker_concurrency == "4" and s.worker_metrics_port == 9000
    q = from_env(QueueSettings, {"JOB_LEASE_SECONDS": "2.5", "JOB_MAX_ATTEMPTS": "5"})
    assert q.job_lease_seconds == 2.5 and q.job_max_attempts == 5
    assert from_env(EngineSettings, {}).model_name == "gemma-3-270m"
    # CLI flags override the environment.
    g = from_env(GatewaySettings, {"GATEWAY_PORT": "1234"}, gateway_port=4321)
    assert g.gateway_port == 4321


@pytest.mark.parametrize(
    ("cls", "env", "name"),
    [
        (GatewaySettings, {"GATEWAY_PORT": "99999"}, "GATEWAY_PORT"),
        (GatewaySettings, {"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        (QueueSettings, {"JOB_LEASE_SECONDS": "0"}, "JOB_LEASE_SECONDS"),
        (EngineSettings, {"ENGINE": "vllm"}, "ENGINE"),
    ],
)
def test_bad_values_name_the_variable(cls, env, name):
    with pytest.raises(SettingsError) as info:
        from_env(cls, env)
    assert str(info.value).startswith(name)


@pytest.mark.parametrize(
    ("module", "env", "name"),
    [
        ("gateway", {"GATEWAY_PORT": "-1"}, "GATEWAY_PORT"),
        ("streamworker", {"WORKER_CONCURRENCY": "many"}, "WORKER_CONCURRENCY"),
        ("streamworker", {"JOB_MAX_ATTEMPTS": "0"}, "JOB_MAX_ATTEMPTS"),
    ],
)
def test_processes_refuse_to_start_on_bad_values(module, env, name):
    out = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert name in out.stderr
