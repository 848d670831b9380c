"""Bad input gets a 4xx in OpenAI's error shape, never a 500, never a job."""

from __future__ import annotations

import httpx
import pytest

GOOD = {"model": "echo-test", "messages": [{"role": "user", "content": "hi"}]}

CASES = [
    ("malformed json", b'{"model": "echo-test", "messages": [', 400, None),
    ("empty body", b"", 400, None),
    ("not an object", b"[1, 2, 3]", 400, None),
    (
        "invalid utf-8",
        b'{"model": "echo-test", "messages": [{"role": "user", "content": "\xff"}]}',
        400,
        None,
    ),
    (
        "deep nesting",
        b'{"model": "echo-test", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        400,
        None,
    ),
    ("wrong type", {**GOOD, "max_tokens": "ten"}, 400, "max_tokens"),
    ("messages not a list", {**GOOD, "messages": "hi"}, 400, "messages"),
    (
        "unknown role",
        {**GOOD, "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "messages[0].role",
    ),
    ("missing content", {**GOOD, "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    (
        "image part",
        {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages[0].content",
    ),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages"),
    ("n > 1", {**GOOD, "n": 2}, 400, "n"),
    ("temperature too high", {**GOOD, "temperature": 3}, 400, "temperature"),
    ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("stop too long", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("tools", {**GOOD, "tools": [{"type": "function"}]}, 400, "tools"),
    ("missing model", {"messages": GOOD["messages"]}, 400, None),
    ("unknown model", {**GOOD, "model": "gpt-17"}, 404, "model"),
]


@pytest.fixture
def gateway_with_worker(echo_stack):
    return echo_stack[0]


def _assert_openai_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err


@pytest.mark.parametrize(("name", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_chat_request(gateway_with_worker, r, name, body, status, param):
    url = gateway_with_worker.url + "/v1/chat/completions"
    if isinstance(body, bytes):
        resp = httpx.post(url, content=body, timeout=10)
    else:
        resp = httpx.post(url, json=body, timeout=10)
    err = _assert_openai_error(resp, status)
    if param is not None:
        assert err["param"] == param
    if status == 404:
        assert err["code"] == "model_not_found"
    # Nothing was queued for a rejected request.
    assert r.xlen("sw:{echo-test}:jobs") == 0
    assert not r.keys("sw:{echo-test}:job:*")


def test_routes_and_methods(gateway_with_worker):
    base = gateway_with_worker.url
    _assert_openai_error(httpx.get(base + "/v1/nothing-here", timeout=5), 404)
    _assert_openai_error(httpx.get(base + "/v1/chat/completions", timeout=5), 405)
    models = httpx.get(base + "/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["echo-test"]
    assert httpx.get(base + "/health", timeout=5).json() == {"status": "ok"}


def test_body_too_large(gateway_with_worker):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    resp = httpx.post(gateway_with_worker.url + "/v1/chat/completions", json=big, timeout=10)
    _assert_openai_error(resp, 413)
