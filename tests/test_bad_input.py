"""Bad input gets a 4xx in OpenAI's error shape, never a 500, never a job."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import client_for

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
        "messages[0].content[0].type",
    ),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages"),
    ("n above MAX_N", {**GOOD, "n": 9}, 400, "n"),
    ("n zero", {**GOOD, "n": 0}, 400, "n"),
    ("temperature too high", {**GOOD, "temperature": 3}, 400, "temperature"),
    ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("stop too long", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("tool without function", {**GOOD, "tools": [{"type": "function"}]}, 400, "tools[0]"),
    ("tool_choice without tools", {**GOOD, "tool_choice": "required"}, 400, "tool_choice"),
    (
        "tool_choice unknown function",
        {
            **GOOD,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "tool_choice",
    ),
    (
        "tool message without tool_call_id",
        {**GOOD, "messages": [{"role": "tool", "content": "x"}]},
        400,
        "messages[0].tool_call_id",
    ),
    (
        "parallel_tool_calls not a bool",
        {**GOOD, "parallel_tool_calls": 3},
        400,
        "parallel_tool_calls",
    ),
    ("top_logprobs above 20", {**GOOD, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("top_logprobs without logprobs", {**GOOD, "top_logprobs": 2}, 400, "top_logprobs"),
    ("logit_bias key", {**GOOD, "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ("logit_bias value", {**GOOD, "logit_bias": {"5": 200}}, 400, "logit_bias"),
    ("top_k negative", {**GOOD, "top_k": -1}, 400, "top_k"),
    ("min_p above 1", {**GOOD, "min_p": 2}, 400, "min_p"),
    ("repeat_penalty zero", {**GOOD, "repeat_penalty": 0}, 400, "repeat_penalty"),
    ("functions (deprecated)", {**GOOD, "functions": [{"name": "f"}]}, 400, "functions"),
    ("seed above int64", {**GOOD, "seed": 2**63}, 400, "seed"),
    ("seed below int64", {**GOOD, "seed": -(2**63) - 1}, 400, "seed"),
    (
        "stream_options without stream",
        {**GOOD, "stream_options": {"include_usage": True}},
        400,
        "stream_options",
    ),
    (
        "unknown response_format",
        {**GOOD, "response_format": {"type": "xml"}},
        400,
        "response_format",
    ),
    (
        "json_schema without a schema object",
        {**GOOD, "response_format": {"type": "json_schema"}},
        400,
        "response_format",
    ),
    (
        "json_schema the converter cannot read",
        {
            **GOOD,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "tuple"}},
            },
        },
        400,
        "response_format",
    ),
    ("presence_penalty out of range", {**GOOD, "presence_penalty": 3}, 400, "presence_penalty"),
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


def test_refusals_through_the_openai_client(gateway_with_worker, r):
    """The official client sends these as typed arguments; each refusal names
    its param, and a no-op value of the same field is served."""
    client = client_for(gateway_with_worker)
    chat = {"model": "echo-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = [
        (lambda: client.chat.completions.create(**chat, seed=2**63), "seed"),
        (
            lambda: client.chat.completions.create(
                **chat,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}},
                },
            ),
            "response_format",
        ),
        (
            lambda: client.chat.completions.create(**chat, logit_bias={"-3": 1}),
            "logit_bias",
        ),
        (
            lambda: client.completions.create(model="echo-test", prompt="hi", suffix="!"),
            "suffix",
        ),
        (
            lambda: client.completions.create(
                model="echo-test", prompt="hi", stream_options={"include_usage": True}
            ),
            "stream_options",
        ),
    ]
    for call, param in refused:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body["param"] == param, info.value.body
    assert r.xlen("sw:{echo-test}:jobs") == 0 and not r.keys("sw:{echo-test}:job:*")

    out = client.chat.completions.create(
        **chat, response_format={"type": "text"}, presence_penalty=0, user="u-1", seed=-(2**63)
    )
    assert out.choices[0].message.content == "hi hi "
