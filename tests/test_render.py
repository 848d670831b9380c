"""Response bodies and SSE frames, byte for byte, for both API formats.
The shapes are what the official openai client parses; the legacy ones
(`text_completion`) are kept exactly as clients of the old endpoint read them."""

from __future__ import annotations

import json

import pytest

from gateway import render
from gateway.errors import JobFailed
from gateway.render import ChatRenderer, Renderer, TextRenderer
from streamworker.protocol.wire import End

pytestmark = pytest.mark.unit

END = End(status="completed", finish_reason="length", prompt_tokens=3, completion_tokens=2)
USAGE = b'{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}'
HEAD_CHAT = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":100,"model":"m",'
HEAD_TEXT = b'{"id":"chatcmpl-1","object":"text_completion","created":100,"model":"m",'


def frames(data: bytes) -> list[object]:
    """The JSON payloads of a run of `data:` frames."""
    assert data.endswith(b"\n\n")
    out = []
    for frame in data.split(b"\n\n")[:-1]:
        assert frame.startswith(b"data: ")
        out.append(json.loads(frame[len(b"data: ") :]))
    return out


def test_chat_body() -> None:
    body = ChatRenderer("chatcmpl-1", "m", 100).body("hello", END)
    assert body == (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":100,"model":"m",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},'
        b'"finish_reason":"length","logprobs":null}],"usage":' + USAGE + b"}"
    )


def test_chat_frames() -> None:
    out = ChatRenderer("chatcmpl-1", "m", 100)
    assert out.opening() == (
        b"data: " + HEAD_CHAT + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    )
    assert out.delta("hi ") == (
        b"data: " + HEAD_CHAT + b'"choices":[{"index":0,"delta":{"content":"hi "},'
        b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    )
    closing = (
        b"data: " + HEAD_CHAT + b'"choices":[{"index":0,"delta":{},'
        b'"logprobs":null,"finish_reason":"length"}],"usage":null}\n\n'
    )
    assert out.closing(END, include_usage=False) == closing
    assert out.closing(END, include_usage=True) == (
        closing + b"data: " + HEAD_CHAT + b'"choices":[],"usage":' + USAGE + b"}\n\n"
    )


def test_text_body() -> None:
    body = TextRenderer("chatcmpl-1", "m", 100).body("once", END)
    assert json.loads(body) == {
        "id": "chatcmpl-1",
        "object": "text_completion",
        "created": 100,
        "model": "m",
        "choices": [{"index": 0, "text": "once", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    assert body == (
        b'{"id":"chatcmpl-1","object":"text_completion","created":100,"model":"m",'
        b'"choices":[{"index":0,"text":"once","logprobs":null,"finish_reason":"length"}],'
        b'"usage":' + USAGE + b"}"
    )


def test_text_frames() -> None:
    out = TextRenderer("chatcmpl-1", "m", 100)
    assert out.opening() == b""  # the legacy stream has no role chunk
    # No "usage" key at all outside the usage chunk, as before.
    assert out.delta("upon") == (
        b"data: " + HEAD_TEXT + b'"choices":[{"index":0,"text":"upon","logprobs":null,'
        b'"finish_reason":null}]}\n\n'
    )
    closing = (
        b"data: " + HEAD_TEXT + b'"choices":[{"index":0,"text":"","logprobs":null,'
        b'"finish_reason":"length"}]}\n\n'
    )
    assert out.closing(END, include_usage=False) == closing
    assert out.closing(END, include_usage=True) == (
        closing + b"data: " + HEAD_TEXT + b'"choices":[],"usage":' + USAGE + b"}\n\n"
    )


@pytest.mark.parametrize("renderer", [ChatRenderer, TextRenderer])
def test_text_survives_escaping(renderer: type[Renderer]) -> None:
    tricky = 'quote " backslash \\ newline \n nul \x00 emoji 🙂'
    out = renderer("chatcmpl-1", "m", 100)
    (chunk,) = frames(out.delta(tricky))
    assert isinstance(chunk, dict)
    choice = chunk["choices"][0]
    assert choice.get("text", choice.get("delta", {}).get("content")) == tricky


def test_error_frame_is_the_error_body() -> None:
    err = JobFailed("the job failed")
    assert frames(render.error_frame(err)) == [err.body()]


def test_usage_of() -> None:
    usage = render.usage_of(END)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 2, 5)
