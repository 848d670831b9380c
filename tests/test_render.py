"""Response bodies and SSE frames, byte for byte, for both API formats.
The shapes are what the official openai client parses; the legacy ones
(`text_completion`) are kept exactly as clients of the old endpoint read them."""

from __future__ import annotations

import json

import pytest

from gateway import render
from gateway.choices import Collected, Content
from gateway.errors import JobFailed
from gateway.render import ChatRenderer, Finished, TextRenderer
from gateway.tools import Call
from streamworker.protocol.wire import LogEntry, TokenLogprob, TopLogprob

pytestmark = pytest.mark.unit

USAGE = render.usage(3, 2)
USAGE_JSON = b'{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}'
HEAD_CHAT = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":100,"model":"m",'
HEAD_TEXT = b'{"id":"cmpl-1","object":"text_completion","created":100,"model":"m",'


def chat_out(logprobs: bool = False) -> ChatRenderer:
    return ChatRenderer(job_id="chatcmpl-1", model="m", created=100, logprobs=logprobs)


def text_out(logprobs: bool = False, prompt_chars: int = 0) -> TextRenderer:
    return TextRenderer(
        job_id="cmpl-1", model="m", created=100, logprobs=logprobs, prompt_chars=prompt_chars
    )


def finished(index: int, text: str, reason: str = "length", **kw: object) -> Finished:
    c = Collected(index)
    c.add([Content(text, tuple(kw.get("entries", ())))])  # type: ignore[arg-type]
    if "calls" in kw:
        c.calls = kw["calls"]  # type: ignore[assignment]
        c.text = []
    return Finished(c, reason)


def frames(data: bytes) -> list[dict]:
    """The JSON payloads of a run of `data:` frames."""
    assert data.endswith(b"\n\n")
    out = []
    for frame in data.split(b"\n\n")[:-1]:
        assert frame.startswith(b"data: ")
        out.append(json.loads(frame[len(b"data: ") :]))
    return out


def lp(piece: bytes, logprob: float, *top: tuple[bytes, float]) -> TokenLogprob:
    return TokenLogprob(piece, logprob, [TopLogprob(i, p, v) for i, (p, v) in enumerate(top)])


def test_chat_body() -> None:
    body = chat_out().body([finished(0, "hello")], USAGE)
    assert body == (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":100,"model":"m",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},'
        b'"finish_reason":"length","logprobs":null}],"usage":'
        + USAGE_JSON
        + b',"service_tier":"default"}'
    )


def test_chat_frames() -> None:
    out = chat_out()
    assert out.opening(1) == (
        b"data: " + HEAD_CHAT + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"logprobs":null,"finish_reason":null}],"usage":null,"service_tier":"default"}\n\n'
    )
    assert out.content(0, "hi ", ()) == (
        b"data: " + HEAD_CHAT + b'"choices":[{"index":0,"delta":{"content":"hi "},'
        b'"logprobs":null,"finish_reason":null}],"usage":null,"service_tier":"default"}\n\n'
    )
    closing = (
        b"data: " + HEAD_CHAT + b'"choices":[{"index":0,"delta":{},'
        b'"logprobs":null,"finish_reason":"length"}],"usage":null,"service_tier":"default"}\n\n'
    )
    assert out.closing(["length"], None) == closing
    assert out.closing(["length"], USAGE) == (
        closing
        + b"data: "
        + HEAD_CHAT
        + b'"choices":[],"usage":'
        + USAGE_JSON
        + b',"service_tier":"default"}\n\n'
    )


def test_n_choices_each_have_their_index() -> None:
    out = chat_out()
    assert [f["choices"][0]["index"] for f in frames(out.opening(3))] == [0, 1, 2]
    closing = frames(out.closing(["stop", "length"], None))
    assert [(f["choices"][0]["index"], f["choices"][0]["finish_reason"]) for f in closing] == [
        (0, "stop"),
        (1, "length"),
    ]
    body = json.loads(chat_out().body([finished(0, "a"), finished(1, "b", "stop")], USAGE))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "a", "length"),
        (1, "b", "stop"),
    ]


def test_chat_logprobs() -> None:
    entries = (
        LogEntry(5, "Hi", logprob=lp(b"Hi", -0.5, (b"Hi", -0.5), (b"Yo", -1.5))),
        LogEntry(6, "", logprob=lp(b"\xe2\x80", -2.0)),  # half a character
        LogEntry(-1, "!"),  # a tail: no token, no logprob
    )
    (chunk,) = frames(chat_out(logprobs=True).content(0, "Hi!", entries))
    content = chunk["choices"][0]["logprobs"]["content"]
    assert content[0] == {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": [72, 105],
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
        ],
    }
    assert content[1]["bytes"] == [0xE2, 0x80] and len(content) == 2
    body = json.loads(chat_out(logprobs=True).body([finished(0, "Hi", entries=entries)], USAGE))
    assert len(body["choices"][0]["logprobs"]["content"]) == 2


def test_tool_calls_body_and_frames() -> None:
    calls = (Call("call_a", "get_weather", '{"city": "Paris, France"}'),)
    body = json.loads(chat_out().body([finished(0, "", "tool_calls", calls=calls)], USAGE))
    message = body["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris, France"}'},
                "type": "function",
            }
        ],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    deltas = [f["choices"][0]["delta"]["tool_calls"][0] for f in frames(chat_out().calls(0, calls))]
    # The first names the call; the rest carry the arguments in pieces.
    assert deltas[0] == {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert len(deltas) > 2 and all(set(d) == {"index", "function"} for d in deltas[1:])
    assert "".join(d["function"]["arguments"] for d in deltas) == calls[0].arguments


def test_text_body() -> None:
    body = text_out().body([finished(0, "once")], USAGE)
    assert body == (
        b'{"id":"cmpl-1","object":"text_completion","created":100,"model":"m",'
        b'"choices":[{"index":0,"text":"once","logprobs":null,"finish_reason":"length"}],'
        b'"usage":' + USAGE_JSON + b"}"
    )


def test_text_frames() -> None:
    out = text_out()
    assert out.opening(1) == b""  # the legacy stream has no role chunk
    # No "usage" key at all outside the usage chunk, as before.
    assert out.content(0, "upon", ()) == (
        b"data: " + HEAD_TEXT + b'"choices":[{"index":0,"text":"upon","logprobs":null,'
        b'"finish_reason":null}]}\n\n'
    )
    closing = (
        b"data: " + HEAD_TEXT + b'"choices":[{"index":0,"text":"","logprobs":null,'
        b'"finish_reason":"length"}]}\n\n'
    )
    assert out.closing(["length"], None) == closing
    assert out.closing(["length"], USAGE) == (
        closing + b"data: " + HEAD_TEXT + b'"choices":[],"usage":' + USAGE_JSON + b"}\n\n"
    )


def test_legacy_logprobs_with_offsets_and_echo() -> None:
    echoed = (
        LogEntry(1, "Once", echo=True),  # the prompt's first token: no logprob
        LogEntry(2, " upon", echo=True, logprob=lp(b" upon", -3.0)),
        LogEntry(3, " a", logprob=lp(b" a", -0.25, (b" a", -0.25), (b" the", -2.0))),
    )
    out = text_out(logprobs=True)
    (first,) = frames(out.content(0, "Once upon a", echoed[:2]))
    (second,) = frames(out.content(0, " a", echoed[2:]))
    a, b = first["choices"][0]["logprobs"], second["choices"][0]["logprobs"]
    assert a == {
        "tokens": ["Once", " upon"],
        "token_logprobs": [None, -3.0],
        "top_logprobs": [None, {}],
        "text_offset": [0, 4],
    }
    assert b == {
        "tokens": [" a"],
        "token_logprobs": [-0.25],
        "top_logprobs": [{" a": -0.25, " the": -2.0}],
        "text_offset": [9],
    }
    # Without echo the offsets start after the prompt's characters.
    body = json.loads(
        text_out(logprobs=True, prompt_chars=9).body([finished(0, " a", entries=echoed[2:])], USAGE)
    )
    assert body["choices"][0]["logprobs"]["text_offset"] == [9]


@pytest.mark.parametrize("out", [chat_out(), text_out()])
def test_text_survives_escaping(out: render.Renderer) -> None:
    tricky = 'quote " backslash \\ newline \n nul \x00 emoji 🙂'
    (chunk,) = frames(out.content(0, tricky, ()))
    choice = chunk["choices"][0]
    assert choice.get("text", choice.get("delta", {}).get("content")) == tricky


def test_error_frame_is_the_error_body() -> None:
    err = JobFailed("the job failed")
    assert frames(render.error_frame(err)) == [err.body()]


def test_usage() -> None:
    usage = render.usage(3, 2)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 2, 5)
