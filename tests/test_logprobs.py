"""Logprobs in OpenAI's shapes, through the official client against the
bundled model on both engines, streamed and not: chat `logprobs` +
`top_logprobs` (`choices[].logprobs.content[]`), and legacy `logprobs` +
`echo` (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.model_stacks import MODEL, client, stack_fixture

engine_stack = stack_fixture()
ASK = [{"role": "user", "content": "Name a colour."}]
PROMPT = "The capital of France is"


def _chat(gateway: Any, stream: bool, **kw: Any) -> tuple[str, list[Any], Any]:
    """(text, logprob tokens, usage) of choice 0."""
    c = client(gateway)
    args = {"model": MODEL, "messages": ASK, "max_tokens": 8, "temperature": 0, **kw}
    if not stream:
        out = c.chat.completions.create(**args)
        return out.choices[0].message.content or "", out.choices[0].logprobs.content, out.usage
    text, tokens, usage = "", [], None
    for chunk in c.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                tokens += choice.logprobs.content or []
    return text, tokens, usage


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_logprobs(engine_stack, stream: bool) -> None:
    text, tokens, usage = _chat(engine_stack, stream, logprobs=True, top_logprobs=3)
    assert len(tokens) == usage.completion_tokens
    # The bytes of the tokens are the text (no token is left out).
    assert b"".join(bytes(t.bytes) for t in tokens).decode() == text
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted(
            (a.logprob for a in t.top_logprobs), reverse=True
        )
        # Temperature 0: the sampled token is the likeliest.
        assert math.isclose(t.logprob, t.top_logprobs[0].logprob)
        assert t.token == t.top_logprobs[0].token


def test_streamed_logprobs_equal_the_whole_ones(engine_stack) -> None:
    whole = _chat(engine_stack, False, logprobs=True, top_logprobs=2)
    streamed = _chat(engine_stack, True, logprobs=True, top_logprobs=2)
    assert whole[0] == streamed[0]
    assert [(t.token, t.logprob) for t in whole[1]] == [(t.token, t.logprob) for t in streamed[1]]


def test_no_logprobs_unless_asked(engine_stack) -> None:
    out = client(engine_stack).chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=2, temperature=0
    )
    assert out.choices[0].logprobs is None


def _legacy(gateway: Any, stream: bool, **kw: Any) -> tuple[str, dict[str, list[Any]]]:
    c = client(gateway)
    args = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, **kw}
    if not stream:
        choice = c.completions.create(**args).choices[0]
        return choice.text, choice.logprobs.model_dump() if choice.logprobs else {}
    text, lp = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in c.completions.create(**args, stream=True):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs is not None:
                for key in lp:
                    lp[key] += getattr(choice.logprobs, key) or []
    return text, lp


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_legacy_logprobs_with_echo(engine_stack, stream: bool) -> None:
    text, lp = _legacy(engine_stack, stream, logprobs=2, echo=True)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    n = len(lp["tokens"])
    assert n == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    # The prompt's first token has nothing before it: no logprob.
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x is not None and x <= 0 for x in lp["token_logprobs"][1:])
    assert all(len(top) <= 2 for top in lp["top_logprobs"][1:])
    # Offsets point at each token's text.
    assert lp["text_offset"][0] == 0
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert text[offset : offset + len(token)] == token


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_legacy_logprobs_without_echo(engine_stack, stream: bool) -> None:
    text, lp = _legacy(engine_stack, stream, logprobs=0)
    assert not text.startswith(PROMPT) and len(lp["tokens"]) == 4
    assert all(x is not None for x in lp["token_logprobs"])
    # Offsets count from the start of the prompt, as OpenAI's do.
    assert lp["text_offset"][0] == len(PROMPT)


def test_echo_alone_returns_the_prompt_first(engine_stack) -> None:
    text, _ = _legacy(engine_stack, False, echo=True)
    plain, _ = _legacy(engine_stack, False)
    assert text == PROMPT + plain
