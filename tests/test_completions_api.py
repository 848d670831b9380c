"""The legacy /v1/completions endpoint end to end (real gateway, echo worker,
the official client): the same shapes as before the handlers were split."""

from __future__ import annotations

import json

import httpx

from tests.conftest import client_for


def test_legacy_completion_streamed_and_not(echo_stack):
    gateway, _ = echo_stack
    client = client_for(gateway)
    raw = client.completions.with_raw_response.create(
        model="echo-test", prompt="one two", max_tokens=3
    )
    out = raw.parse()
    assert raw.headers["x-job-id"] == out.id
    assert out.object == "text_completion"
    assert out.choices[0].text == "one two one "
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 3

    chunks = list(
        client.completions.create(
            model="echo-test",
            prompt="a b",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b a b "
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"

    # On the wire: no role chunk, logprobs null, and [DONE] at the end.
    with httpx.stream(
        "POST",
        gateway.url + "/v1/completions",
        json={"model": "echo-test", "prompt": "x", "max_tokens": 1, "stream": True},
        timeout=10,
    ) as resp:
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    first = json.loads(data[0])
    assert "usage" not in first
    assert first["choices"] == [{"index": 0, "text": "x ", "logprobs": None, "finish_reason": None}]
