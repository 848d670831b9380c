from __future__ import annotations

from tests.conftest import client_for


def test_stream_and_nonstream_echo(echo_stack):
    gateway, _ = echo_stack
    client = client_for(gateway)
    out = client.chat.completions.create(
        model="echo-test", messages=[{"role": "user", "content": "one two three"}], max_tokens=5
    )
    assert out.choices[0].message.content == "one two three one two "
    assert out.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model="echo-test",
            messages=[{"role": "user", "content": "a b"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a b a b "
    assert chunks[-1].usage.completion_tokens == 4
