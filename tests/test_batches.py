"""The OpenAI Batch API end to end through the `openai` client: real
redis-server, real gateway, echo-engine workers (the test double)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import ECHO, client_for
from tests.harness import wait_for
from tests.test_recovery import expected_echo

MODEL = "echo-test"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# Short windows (the BATCH_CUSTOM_WINDOWS extension) and a fast runner.
GATEWAY = {"BATCH_CUSTOM_WINDOWS": "true", "BATCH_POLL_SECONDS": "0.1"}


def chat_line(i: int, tokens: int = 3) -> dict:
    return {
        "custom_id": f"chat-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"line{i} words here"}],
        },
    }


def embed_line(i: int) -> dict:
    return {
        "custom_id": f"emb-{i}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": f"text number {i}", "encoding_format": "float"},
    }


def upload(client: openai.OpenAI, lines: list[dict] | bytes) -> str:
    data = (
        lines if isinstance(lines, bytes) else "".join(json.dumps(x) + "\n" for x in lines).encode()
    )
    return client.files.create(file=("input.jsonl", data), purpose="batch").id


def start_batch(client: openai.OpenAI, lines, endpoint: str, window: str = "24h"):
    return client.batches.create(
        input_file_id=upload(client, lines),
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window=window,  # type: ignore[arg-type]
        metadata={"purpose": "test"},
    )


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 60):
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in TERMINAL and b,
        timeout=timeout,
        what=f"batch {batch_id} to end",
    )


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x]


def answers(client: openai.OpenAI, batch) -> dict[str, dict]:
    """custom_id -> its line, asserting no custom_id is answered twice."""
    lines = jsonl(client, batch.output_file_id) + jsonl(client, batch.error_file_id)
    ids = [x["custom_id"] for x in lines]
    assert len(ids) == len(set(ids)), "a line was answered twice"
    return {x["custom_id"]: x for x in lines}


def check_chat(line: dict, i: int, tokens: int = 3) -> None:
    resp = line["response"]
    assert resp["status_code"] == 200 and line["error"] is None
    body = resp["body"]
    assert body["object"] == "chat.completion" and body["service_tier"] == "flex"
    assert body["choices"][0]["message"]["content"] == expected_echo(f"line{i} words here", tokens)
    assert body["usage"]["completion_tokens"] == tokens


def test_mixed_batches_answer_every_line_once(start_gateway, start_worker, r):
    start_worker(**ECHO, WORKER_CONCURRENCY="8")
    gw = start_gateway(**GATEWAY, BATCH_MAX_IN_FLIGHT="64")
    client = client_for(gw, timeout=30)
    chats = start_batch(client, [chat_line(i) for i in range(150)], "/v1/chat/completions")
    embeds = start_batch(client, [embed_line(i) for i in range(50)], "/v1/embeddings")
    assert chats.status == "validating" and chats.metadata == {"purpose": "test"}
    chats, embeds = finished(client, chats.id), finished(client, embeds.id)
    assert chats.status == "completed", chats
    assert embeds.status == "completed", embeds
    assert chats.request_counts.model_dump() == {"total": 150, "completed": 150, "failed": 0}
    assert embeds.request_counts.model_dump() == {"total": 50, "completed": 50, "failed": 0}
    assert chats.error_file_id is None and chats.completed_at >= chats.in_progress_at
    got = answers(client, chats)
    assert set(got) == {f"chat-{i}" for i in range(150)}
    for i in range(150):
        check_chat(got[f"chat-{i}"], i)
    # The same request sent on its own answers the same body (but its id,
    # creation time and tier).
    alone = httpx.post(
        gw.url + "/v1/chat/completions", json=chat_line(7)["body"], timeout=10
    ).json()
    batched = got["chat-7"]["response"]["body"]
    for field in ("id", "created", "service_tier"):
        alone.pop(field, None)
        batched.pop(field, None)
    assert alone == batched
    vectors = answers(client, embeds)
    assert set(vectors) == {f"emb-{i}" for i in range(50)}
    one = vectors["emb-3"]["response"]["body"]
    direct = client.embeddings.create(model=MODEL, input="text number 3", encoding_format="float")
    assert one["data"][0]["embedding"] == pytest.approx(direct.data[0].embedding, abs=1e-6)
    assert one["object"] == "list" and one["usage"]["prompt_tokens"] == direct.usage.prompt_tokens
    # Every line ran as its own flex job; nothing is left queued for the batch.
    listed = client.batches.list(limit=1)
    assert len(listed.data) == 1 and listed.has_more
    assert {b.id for b in client.batches.list()} == {chats.id, embeds.id}
    assert r.zcard("sw:batches:active") == 0


def test_bad_lines_fail_validation_with_per_line_errors(start_gateway, start_worker):
    start_worker(**ECHO)
    gw = start_gateway(**GATEWAY)
    client = client_for(gw, timeout=30)
    good = chat_line(0)
    bad_model = chat_line(3) | {"body": {**chat_line(3)["body"], "model": "no-such-model"}}
    bad_param = chat_line(4) | {"body": {**chat_line(4)["body"], "temperature": "hot"}}
    lines = [
        json.dumps(good).encode(),
        b"",  # blank lines are skipped, and still counted in line numbers
        b"{not json",
        json.dumps(chat_line(0)).encode(),  # the custom_id again
        json.dumps(bad_model).encode(),
        json.dumps(bad_param).encode(),
        json.dumps(chat_line(5) | {"url": "/v1/embeddings"}).encode(),
        json.dumps(chat_line(6) | {"method": "GET"}).encode(),
    ]
    batch = finished(client, start_batch(client, b"\n".join(lines), "/v1/chat/completions").id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.output_file_id is None and batch.request_counts.completed == 0
    errors = {e.line: e for e in batch.errors.data}
    assert sorted(errors) == [3, 4, 5, 6, 7, 8]
    assert errors[3].code == "invalid_json"
    assert errors[4].code == "duplicate_custom_id"
    assert errors[5].code == "model_not_found" and errors[5].param == "body.model"
    assert errors[6].param == "body.temperature"
    assert errors[7].code == "mismatched_endpoint" and errors[8].code == "invalid_method"
    # Refused at once: an unknown endpoint, a window other than 24h where
    # custom windows are off (not here: a malformed one), a missing file.
    fid = upload(client, [good])
    for kw, param in (
        ({"endpoint": "/v1/images", "completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/chat/completions", "completion_window": "1 day"}, "completion_window"),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            client.batches.create(input_file_id=fid, **kw)  # type: ignore[arg-type]
        assert exc.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_cancel_mid_way(start_gateway, start_worker):
    start_worker(**ECHO, ECHO_TOKEN_INTERVAL_MS="50", WORKER_CONCURRENCY="2")
    gw = start_gateway(**GATEWAY, BATCH_MAX_IN_FLIGHT="4", BATCH_CANCEL_GRACE_SECONDS="3")
    client = client_for(gw, timeout=30)
    batch = start_batch(client, [chat_line(i, 4) for i in range(40)], "/v1/chat/completions")
    wait_for(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4,
        timeout=30,
        what="some lines done",
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = finished(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    got = answers(client, batch)
    assert set(got) == {f"chat-{i}" for i in range(40)}
    done = [c for c, x in got.items() if x["response"] is not None]
    assert 4 <= len(done) < 40 and batch.request_counts.completed == len(done)
    for c in done:
        check_chat(got[c], int(c.split("-")[1]), 4)
    for c, x in got.items():
        if c not in done:
            assert x["error"]["code"] == "batch_cancelled"
    # A finished batch cannot be cancelled any more.
    done_batch = finished(client, start_batch(client, [chat_line(0)], "/v1/chat/completions").id)
    assert done_batch.status == "completed"
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(done_batch.id)


def test_expiry_delivers_finished_lines(start_gateway, start_worker):
    start_worker(**ECHO, ECHO_TOKEN_INTERVAL_MS="50", WORKER_CONCURRENCY="2")
    gw = start_gateway(**GATEWAY, BATCH_MAX_IN_FLIGHT="4")
    client = client_for(gw, timeout=30)
    batch = start_batch(client, [chat_line(i, 4) for i in range(60)], "/v1/chat/completions", "4s")
    batch = finished(client, batch.id, timeout=30)
    assert batch.status == "expired" and batch.expired_at >= batch.expires_at
    got = answers(client, batch)
    assert set(got) == {f"chat-{i}" for i in range(60)}
    done = [c for c, x in got.items() if x["response"] is not None]
    assert 0 < len(done) < 60
    for c in done:
        check_chat(got[c], int(c.split("-")[1]), 4)
    for c, x in got.items():
        if c not in done:
            assert x["response"] is None and x["error"]["code"] == "batch_expired"
    assert batch.request_counts.completed == len(done)
    assert batch.request_counts.failed == 60 - len(done)


def test_files_and_batches_belong_to_their_key(start_gateway, start_worker, tmp_path):
    from tests.test_isolation import ALICE, BOB, keys_file

    start_worker(**ECHO)
    gw = start_gateway(
        **GATEWAY,
        OPENAI_API_KEY_REQUIRED="true",
        API_KEYS_FILE=keys_file(tmp_path, alice=ALICE, bob=BOB),
    )
    alice, bob = client_for(gw, api_key=ALICE, timeout=30), client_for(gw, api_key=BOB, timeout=30)
    data = json.dumps(chat_line(0)).encode() + b"\n"
    upload_ = alice.files.create(file=("mine.jsonl", data), purpose="batch")
    assert upload_.bytes == len(data) and upload_.filename == "mine.jsonl"
    assert alice.files.content(upload_.id).content == data
    batch = finished(
        alice,
        alice.batches.create(
            input_file_id=upload_.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert batch.status == "completed"
    for call in (
        lambda: bob.files.retrieve(upload_.id),
        lambda: bob.files.content(upload_.id),
        lambda: bob.files.delete(upload_.id),
        lambda: bob.files.retrieve(batch.output_file_id),
        lambda: bob.batches.retrieve(batch.id),
        lambda: bob.batches.cancel(batch.id),
        lambda: bob.batches.create(
            input_file_id=upload_.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert bob.files.list().data == [] and bob.batches.list().data == []
    assert {f.id for f in alice.files.list()} == {upload_.id, batch.output_file_id}
    assert [f.id for f in alice.files.list(purpose="batch")] == [upload_.id]
    assert alice.files.retrieve(batch.output_file_id).purpose == "batch_output"
    # Deleted: gone for its owner too.
    assert alice.files.delete(upload_.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(upload_.id)
    assert [f.id for f in alice.files.list()] == [batch.output_file_id]
    # Refused: a purpose other than batch, a file over the limit.
    with pytest.raises(openai.BadRequestError) as exc:
        alice.files.create(file=("x.jsonl", data), purpose="assistants")
    assert exc.value.body["param"] == "purpose"


def test_file_size_limit_is_its_own(start_gateway):
    """Uploads are not held to MAX_BODY_BYTES (a request's limit) but to
    BATCH_MAX_FILE_BYTES; no worker is needed to store a file."""
    gw = start_gateway(MAX_BODY_BYTES="65536", BATCH_MAX_FILE_BYTES="300000")
    client = client_for(gw, timeout=30)
    line = json.dumps(chat_line(0)).encode() + b"\n"
    big = line * (200_000 // len(line))
    made = client.files.create(file=("big.jsonl", big), purpose="batch")
    assert made.bytes == len(big) > 65536
    assert client.files.content(made.id).content == big
    with pytest.raises(openai.APIStatusError) as exc:
        client.files.create(file=("huge.jsonl", big * 2), purpose="batch")
    assert exc.value.status_code == 413 and exc.value.body["param"] == "file"
    assert [f.id for f in client.files.list()] == [made.id]


def test_bad_requests_are_400_naming_the_param(start_gateway):
    gw = start_gateway()
    client = client_for(gw, timeout=30)
    fid = upload(client, [chat_line(0)])
    cases = [
        ("POST", "/v1/batches", {"json": {"endpoint": "/v1/chat/completions"}}, None),
        ("POST", "/v1/batches", {"content": b"{nope"}, None),
        (
            "POST",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": fid,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "2h",
                }
            },
            "completion_window",  # custom windows are off by default
        ),
        (
            "POST",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": fid,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    "metadata": {"k": 5},
                }
            },
            "metadata",
        ),
        ("POST", "/v1/files", {"json": {"purpose": "batch"}}, "file"),
        ("POST", "/v1/files", {"files": {"purpose": (None, "batch")}}, "file"),
        ("GET", "/v1/files?limit=abc", {}, "limit"),
        ("GET", "/v1/files?order=up", {}, "order"),
        ("GET", "/v1/batches?limit=1000", {}, "limit"),
        ("POST", "/v1/webhooks", {"json": {"url": "ftp://x"}}, "url"),
        ("POST", "/v1/webhooks", {"json": {"url": "http://x", "events": ["nope"]}}, "events[0]"),
    ]
    for method, path, kw, param in cases:
        resp = httpx.request(method, gw.url + path, timeout=10, **kw)
        assert resp.status_code == 400, (path, kw, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        if param is not None:
            assert err["param"] == param, (path, kw, err)
    for path in ("/v1/batches/batch_nope", "/v1/files/file-nope", "/v1/files/file-nope/content"):
        assert httpx.get(gw.url + path, timeout=10).status_code == 404
    assert httpx.post(gw.url + "/v1/batches/batch_nope/cancel", timeout=10).status_code == 404
    assert httpx.delete(gw.url + "/v1/webhooks/we_nope", timeout=10).status_code == 404
    assert client.batches.list().data == [] and client.files.list(after="file-nope").data == []
