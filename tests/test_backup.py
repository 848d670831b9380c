"""Redis backups that restore: `ops/backup/redis-backup.sh` snapshots a
Redis holding finished, running and queued jobs; `redis-restore.sh` brings
that into a fresh data directory for a Redis with the project's redis.conf
(appendonly yes); a new worker then drains the queue and the finished
results still read through the jobs API."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.conftest import ECHO
from tests.harness import ROOT, Gateway, RedisServer, Worker, wait_for
from tests.test_recovery import expected_echo

BACKUP = ROOT / "ops" / "backup"
# Short leases: the job that was running at backup time belongs to a worker
# that no longer exists after the restore; another takes it after one lease.
ENV = {**ECHO, "ECHO_TOKEN_INTERVAL_MS": "20", "JOB_LEASE_SECONDS": "2"}


def submit(gateway: Gateway, words: str, max_tokens: int) -> str:
    resp = httpx.post(
        gateway.url + "/v1/jobs",
        json={
            "model": "echo-test",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": words}],
        },
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def job(gateway: Gateway, job_id: str) -> dict:
    return httpx.get(f"{gateway.url}/v1/jobs/{job_id}", timeout=5).json()


def wait_status(gateway: Gateway, job_id: str, status: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (j := job(gateway, job_id))["status"] == status and j,
        timeout=timeout,
        what=f"job {job_id} {status}",
    )


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        ["sh", str(BACKUP / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_backup_restores_queued_running_and_finished_jobs(tmp_path: Path) -> None:
    source = RedisServer(tmp_path / "source")
    restored = RedisServer(tmp_path / "restored")
    naive = RedisServer(tmp_path / "naive")
    started: list = []
    try:
        source.start()
        worker = Worker(source.url, tmp_path / "w1.log", "before", WORKER_CONCURRENCY="1", **ENV)
        started.append(worker.start(redis=source))
        gateway = Gateway(source.url, tmp_path / "g1.log", JOB_LEASE_SECONDS="2")
        started.append(gateway.start())

        finished = {submit(gateway, f"done{i} word", 5): f"done{i} word" for i in range(3)}
        for job_id in finished:
            wait_status(gateway, job_id, "completed")
        # One job runs (6 s of tokens) on the only slot, so the next ones wait.
        running = submit(gateway, "long job", 300)
        wait_status(gateway, running, "running")
        queued = {submit(gateway, f"queued{i} word", 10): f"queued{i} word" for i in range(3)}
        assert all(job(gateway, j)["status"] == "queued" for j in queued)

        cli = f"redis-cli -p {source.port}"
        backups = tmp_path / "backups"
        out = run("redis-backup.sh", REDIS_CLI=cli, BACKUP_DIR=str(backups), KEEP="2")
        for _ in range(2):  # two more: only the newest KEEP stay
            out = run("redis-backup.sh", REDIS_CLI=cli, BACKUP_DIR=str(backups), KEEP="2")
        copies = sorted(p.name for p in backups.iterdir())
        assert len(copies) == 2 and all(re.fullmatch(r"redis-\d{8}-\d{6}\.rdb", c) for c in copies)
        backup = out.stdout.strip()
        assert backup == str(backups / copies[-1])
        # The backup was taken while the long job ran: it is still running there.
        assert job(gateway, running)["status"] == "running"

        # The data is gone with its server and its worker.
        for svc in started:
            svc.kill()
        started.clear()
        source.kill()

        # Why the restore script exists: with appendonly yes, Redis reads the
        # AOF and ignores a dump.rdb put in its directory.
        naive.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(backup, naive.workdir / "dump.rdb")
        naive.start()
        assert naive.cli("DBSIZE").strip() == "0"
        naive.stop()

        restored.workdir.mkdir(parents=True, exist_ok=True)
        out = run(
            "redis-restore.sh", backup, str(restored.workdir), REDIS_CONF=str(ROOT / "redis.conf")
        )
        assert "restored" in out.stderr
        restored.start()  # the project's redis.conf: appendonly yes
        assert int(restored.cli("DBSIZE")) > 0

        gateway = Gateway(restored.url, tmp_path / "g2.log", JOB_LEASE_SECONDS="2")
        worker = Worker(restored.url, tmp_path / "w2.log", "after", WORKER_CONCURRENCY="2", **ENV)
        started += [worker.start(redis=restored), gateway.start()]

        for job_id, words in finished.items():
            done = job(gateway, job_id)
            assert done["status"] == "completed" and done["attempt"] == 1
            assert done["result"]["text"] == expected_echo(words, 5)
        for job_id, words in queued.items():
            done = wait_status(gateway, job_id, "completed")
            assert done["result"]["text"] == expected_echo(words, 10)
        done = wait_status(gateway, running, "completed", timeout=90)
        assert done["result"]["text"] == expected_echo("long job", 300)
        assert done["attempt"] == 2  # resumed by the new worker after the lease
    finally:
        for svc in reversed(started):
            svc.stop(timeout=10)
        for server in (source, restored, naive):
            server.stop()


def test_cron_line_is_the_guides_schedule() -> None:
    lines = [
        line
        for line in (BACKUP / "redis-backup.cron").read_text().splitlines()
        if line and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 1
    fields = lines[0].split()
    assert fields[:5] == ["0", "*/6", "*", "*", "*"]  # every 6 hours
    assert fields[-3].endswith("ops/backup/redis-backup.sh")
    assert "%" not in lines[0]  # cron ends the command at an unescaped %
    for script in ("redis-backup.sh", "redis-restore.sh"):
        subprocess.run(["sh", "-n", str(BACKUP / script)], check=True, timeout=10)
