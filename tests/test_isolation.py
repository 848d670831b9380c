"""Jobs belong to the API key that created them. Another key cannot read,
stream or cancel them (404 job_not_found, the very answer a missing job
gets), and an Idempotency-Key is scoped to its key: two keys sending the same
one get two jobs. Without keys, everyone shares, as before keys existed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from tests.conftest import ECHO, client_for
from tests.harness import PYTHON, ROOT, Gateway, wait_for

ALICE, BOB = "sk-alice-4f1d9c", "sk-bob-77e2ab"
# Two slots at 20 ms a token: a 1000-token job runs for 20 s, long enough to
# poke at, while short jobs pass beside it.
WORKER = {
    **ECHO,
    "ECHO_TOKEN_INTERVAL_MS": "20",
    "ECHO_CONCURRENT": "true",
    "WORKER_CONCURRENCY": "2",
}


def chat(prompt: str, max_tokens: int = 3) -> dict[str, object]:
    return {
        "model": "echo-test",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


def keys_file(tmp_path: Path, **keys: str) -> str:
    """A keys TOML made the way an operator makes one: `hash-key` per key."""
    snippets = [
        subprocess.run(
            [PYTHON, "-m", "gateway", "hash-key", "--name", name],
            input=key + "\n",
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
        for name, key in keys.items()
    ]
    path = tmp_path / "keys.toml"
    path.write_text("\n".join(snippets))
    return str(path)


@pytest.fixture
def keyed_gateway(start_gateway, start_worker, tmp_path: Path) -> Gateway:
    start_worker(**WORKER)
    path = keys_file(tmp_path, alice=ALICE, bob=BOB)
    return start_gateway(OPENAI_API_KEY_REQUIRED="true", API_KEYS_FILE=path)


def as_key(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


def status_of(r: redis_sync.Redis, job_id: str) -> str:
    return r.hget(f"sw:{{echo-test}}:job:{job_id}", "status").decode()


def refused_like_a_missing_job(gw: Gateway, job_id: str, key: str | None) -> None:
    """Every jobs route answers `key` about `job_id` exactly as it answers
    anyone about an id that never existed."""
    routes = [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ]
    missing_id = "chatcmpl-" + "0" * 32
    for method, path in routes:
        resp = httpx.request(method, gw.url + path, headers=as_key(key), timeout=10)
        missing = httpx.request(
            method, gw.url + path.replace(job_id, missing_id), headers=as_key(key), timeout=10
        )
        assert resp.status_code == missing.status_code == 404, (method, path, resp.text)
        assert resp.json() == json.loads(missing.text.replace(missing_id, job_id))
        assert resp.json()["error"]["code"] == "job_not_found"
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_another_key_cannot_see_or_cancel_a_job(keyed_gateway: Gateway, r) -> None:
    gw = keyed_gateway
    created = httpx.post(
        gw.url + "/v1/jobs", json=chat("alpha", 1000), headers=as_key(ALICE), timeout=10
    )
    assert created.status_code == 202
    running = created.json()["id"]
    # A job made by chat completions, through the SDK: its id is X-Job-Id.
    raw = client_for(gw, api_key=ALICE).chat.completions.with_raw_response.create(**chat("beta"))
    answered = raw.headers["x-job-id"]
    assert raw.parse().choices[0].message.content == "beta beta beta "

    for job_id in (running, answered):
        refused_like_a_missing_job(gw, job_id, BOB)
    # Bob's DELETE did nothing: Alice's job runs on.
    assert status_of(r, running) == "running"
    assert status_of(r, answered) == "completed"

    # Alice still has both.
    mine = httpx.get(f"{gw.url}/v1/jobs/{answered}", headers=as_key(ALICE), timeout=10).json()
    assert mine["status"] == "completed" and mine["result"]["text"] == "beta beta beta "
    with httpx.stream(
        "GET", f"{gw.url}/v1/jobs/{running}/events", headers=as_key(ALICE), timeout=10
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                # What the log holds so far, in one event: all of it Alice's.
                first = json.loads(line[6:])
                assert first["text"] == "alpha " * (first["seq"] + 1)
                break
    cancel = httpx.delete(f"{gw.url}/v1/jobs/{running}", headers=as_key(ALICE), timeout=10)
    assert cancel.status_code == 200 and cancel.json()["cancel"] == "cancelling"
    wait_for(lambda: status_of(r, running) == "cancelled", timeout=10, what="cancelled by Alice")


def test_idempotency_keys_are_scoped_to_the_key(keyed_gateway: Gateway, r) -> None:
    gw = keyed_gateway
    same = {"Idempotency-Key": "order-1"}
    a1 = httpx.post(gw.url + "/v1/jobs", json=chat("alpha"), headers=as_key(ALICE) | same)
    b1 = httpx.post(gw.url + "/v1/jobs", json=chat("bravo"), headers=as_key(BOB) | same)
    assert a1.status_code == b1.status_code == 202
    assert a1.json()["id"] != b1.json()["id"]
    a2 = httpx.post(gw.url + "/v1/jobs", json=chat("alpha"), headers=as_key(ALICE) | same)
    b2 = httpx.post(gw.url + "/v1/jobs", json=chat("bravo"), headers=as_key(BOB) | same)
    assert (a2.status_code, a2.json()["id"]) == (200, a1.json()["id"])
    assert (b2.status_code, b2.json()["id"]) == (200, b1.json()["id"])

    # Chat completions: Bob's request with Alice's key name relays Bob's own job.
    chat_key = {"Idempotency-Key": "chat-1"}
    alice, bob = client_for(gw, api_key=ALICE), client_for(gw, api_key=BOB)
    first = alice.chat.completions.with_raw_response.create(**chat("alpha"), extra_headers=chat_key)
    theirs = bob.chat.completions.with_raw_response.create(**chat("bravo"), extra_headers=chat_key)
    assert theirs.headers["x-job-id"] != first.headers["x-job-id"]
    assert theirs.parse().choices[0].message.content == "bravo bravo bravo "
    # Streamed, Bob never sees a word of Alice's either.
    streamed = bob.chat.completions.create(**chat("bravo"), stream=True, extra_headers=chat_key)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "bravo bravo bravo "
    # Alice's retry, whatever it sends, is her first job.
    retry = alice.chat.completions.with_raw_response.create(**chat("other"), extra_headers=chat_key)
    assert retry.headers["x-job-id"] == first.headers["x-job-id"]
    assert retry.parse().choices[0].message.content == "alpha alpha alpha "
    assert len(list(r.scan_iter("sw:{echo-test}:job:*"))) == 4


def test_without_keys_jobs_are_shared(start_gateway, start_worker) -> None:
    start_worker(**WORKER)
    gw = start_gateway()
    one, other = httpx.Client(base_url=gw.url), httpx.Client(base_url=gw.url)
    with one, other:
        job_id = one.post("/v1/jobs", json=chat("shared", 1000), timeout=10).json()["id"]
        assert other.get(f"/v1/jobs/{job_id}", timeout=10).json()["id"] == job_id
        same = {"Idempotency-Key": "anon-1"}
        first = one.post("/v1/jobs", json=chat("x"), headers=same, timeout=10).json()
        again = other.post("/v1/jobs", json=chat("x"), headers=same, timeout=10)
        assert again.status_code == 200 and again.json()["id"] == first["id"]
        assert other.delete(f"/v1/jobs/{job_id}", timeout=10).json()["cancel"] in (
            "cancelled",
            "cancelling",
        )
        wait_for(
            lambda: one.get(f"/v1/jobs/{job_id}", timeout=10).json()["status"] == "cancelled",
            what="cancelled by the other client",
        )


def test_optional_keys_hide_keyed_jobs_from_anonymous_callers(
    start_gateway, start_worker, tmp_path: Path
) -> None:
    # Keys configured but not required: a keyed job is still its key's alone,
    # while an anonymous job stays open to all.
    start_worker(**WORKER)
    gw = start_gateway(API_KEYS_FILE=keys_file(tmp_path, alice=ALICE))
    keyed = httpx.post(gw.url + "/v1/jobs", json=chat("mine"), headers=as_key(ALICE), timeout=10)
    refused_like_a_missing_job(gw, keyed.json()["id"], None)
    anonymous = httpx.post(gw.url + "/v1/jobs", json=chat("ours"), timeout=10).json()["id"]
    seen = httpx.get(f"{gw.url}/v1/jobs/{anonymous}", headers=as_key(ALICE), timeout=10)
    assert seen.status_code == 200
