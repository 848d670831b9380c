"""The legacy /v1/completions endpoint end to end (real gateway, echo
worker, the official client): OpenAI's shapes (`cmpl-` ids,
`text_completion`), the raw prompt in all four shapes (one choice per
prompt, in order), n choices, and the refusals. The bundled model's side
(no chat template, token counts) is in tests/test_raw_completions.py."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import client_for


def test_legacy_completion_streamed_and_not(echo_stack):
    gateway, _ = echo_stack
    client = client_for(gateway)
    raw = client.completions.with_raw_response.create(
        model="echo-test", prompt="one two", max_tokens=3
    )
    out = raw.parse()
    # OpenAI's id for the format; the header names the job behind it.
    assert out.id.startswith("cmpl-")
    assert raw.headers["x-job-id"] == "chatcmpl-" + out.id.removeprefix("cmpl-")
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
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
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


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_batch_of_prompts_is_one_choice_each_in_order(echo_stack, stream):
    gateway, _ = echo_stack
    client = client_for(gateway)
    prompts = ["alpha", "beta gamma", [7, 8]]
    args = {"model": "echo-test", "prompt": prompts, "max_tokens": 2, "n": 2}
    texts: dict[int, str] = {}
    if stream:
        usage = None
        for chunk in client.completions.create(
            **args, stream=True, stream_options={"include_usage": True}
        ):
            usage = chunk.usage or usage
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
    else:
        out = client.completions.create(**args)
        texts = {c.index: c.text for c in out.choices}
        usage = out.usage
    # n per prompt, numbered on across the prompts; the echo engine's choice
    # c starts at word c.
    assert texts == {
        0: "alpha alpha ",
        1: "alpha alpha ",
        2: "beta gamma ",
        3: "gamma beta ",
        4: "7 8 ",
        5: "8 7 ",
    }
    assert usage.completion_tokens == 12  # every choice of every prompt


def test_token_id_prompts(echo_stack):
    gateway, _ = echo_stack
    client = client_for(gateway)
    one = client.completions.create(model="echo-test", prompt=[5, 6, 7], max_tokens=3)
    assert [c.text for c in one.choices] == ["5 6 7 "]
    many = client.completions.create(model="echo-test", prompt=[[1], [2, 3]], max_tokens=2)
    assert [(c.index, c.text) for c in many.choices] == [(0, "1 1 "), (1, "2 3 ")]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "the end"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", 3]}, "prompt[1]"),
        ({"prompt": [[1], [-2]]}, "prompt[1][0]"),
        ({"logprobs": 6}, "logprobs"),
        ({"n": 9}, "n"),
    ],
)
def test_refusals_name_their_param(echo_stack, r, fields, param):
    gateway, _ = echo_stack
    body = {"model": "echo-test", "prompt": "hi", "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client_for(gateway).completions.create(**body)
    assert info.value.body["param"] == param
    assert r.xlen("sw:{echo-test}:jobs") == 0 and not r.keys("sw:{echo-test}:job:*")


def test_a_retried_batch_finds_each_of_its_jobs(echo_stack):
    """An Idempotency-Key on a batch covers each prompt's own job."""
    gateway, _ = echo_stack
    body = {"model": "echo-test", "prompt": ["one", "two", "three"], "max_tokens": 1}
    headers = {"Idempotency-Key": "batch-7"}
    first = httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=30)
    again = httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=30)
    ids = first.headers["x-job-id"].split(", ")
    assert len(set(ids)) == 3 and again.headers["x-job-id"] == first.headers["x-job-id"]
    texts = [c["text"] for c in again.json()["choices"]]
    assert texts == [c["text"] for c in first.json()["choices"]] == ["one ", "two ", "three "]
