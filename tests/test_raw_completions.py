"""The bundled base model through the official client on both engines:
/v1/completions runs the raw prompt (no chat template), in all its shapes;
n choices; and the sampling fields the engines apply (`logit_bias`,
penalties, llama-server's `top_k`, `min_p`, `repeat_penalty`), `stop` and
`max_completion_tokens`."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.model_stacks import MODEL, client, stack_fixture

engine_stack = stack_fixture()
PROMPT = "The capital of France is"
COUNTING = "1, 1, 1, 1, 1, 1,"


def _tokens(gateway: Any, text: str) -> list[int]:
    resp = httpx.post(
        gateway.url + "/tokenize", json={"model": MODEL, "content": text, "add_special": True}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["tokens"]


def _text(gateway: Any, **kw: Any) -> str:
    args = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **kw}
    return client(gateway).completions.create(**args).choices[0].text


def test_the_prompt_is_raw(engine_stack) -> None:
    out = client(engine_stack).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0
    )
    # Exactly the prompt's own tokens (BOS + text): no chat template around it.
    assert out.usage.prompt_tokens == len(_tokens(engine_stack, PROMPT))
    assert out.choices[0].text.strip()
    assert "<start_of_turn>" not in out.choices[0].text


def test_raw_text_equals_in_process_llama(engine_stack) -> None:
    """Temperature 0 through the whole path equals llama-cpp-python's own raw
    completion: the same tokens in, no template."""
    from llama_cpp import Llama

    from streamworker.engines.model_file import resolve_model_path

    llm = Llama(str(resolve_model_path("")), n_ctx=512, verbose=False)
    ref = llm.create_completion(PROMPT, max_tokens=8, temperature=0)
    llm.close()
    assert _text(engine_stack) == ref["choices"][0]["text"]


def test_token_ids_are_the_same_prompt(engine_stack) -> None:
    ids = _tokens(engine_stack, PROMPT)
    assert _text(engine_stack, prompt=ids) == _text(engine_stack)
    out = client(engine_stack).completions.create(
        model=MODEL, prompt=[ids, ids[:3]], max_tokens=4, temperature=0
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text == _text(engine_stack, max_tokens=4)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_list_of_prompts_keeps_its_order(engine_stack, stream: bool) -> None:
    prompts = [PROMPT, "Once upon a time", "import numpy as"]
    args = {"model": MODEL, "prompt": prompts, "max_tokens": 4, "temperature": 0}
    if stream:
        texts: dict[int, str] = {}
        for chunk in client(engine_stack).completions.create(**args, stream=True):
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
    else:
        out = client(engine_stack).completions.create(**args)
        texts = {c.index: c.text for c in out.choices}
    assert [texts[i] for i in range(3)] == [
        _text(engine_stack, prompt=p, max_tokens=4) for p in prompts
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_n_choices(engine_stack, stream: bool) -> None:
    args = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 42,
        "n": 3,
        "logprobs": True,
    }
    c = client(engine_stack)
    if stream:
        texts: dict[int, str] = {}
        tokens: dict[int, int] = {}
        reasons: dict[int, str] = {}
        usage = None
        for chunk in c.chat.completions.create(
            **args, stream=True, stream_options={"include_usage": True}
        ):
            usage = chunk.usage or usage
            for ch in chunk.choices:
                texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
                n = len(ch.logprobs.content or []) if ch.logprobs else 0
                tokens[ch.index] = tokens.get(ch.index, 0) + n
                if ch.finish_reason:
                    reasons[ch.index] = ch.finish_reason
        assert sorted(reasons) == [0, 1, 2]
    else:
        out = c.chat.completions.create(**args)
        assert [ch.index for ch in out.choices] == [0, 1, 2]
        texts = {ch.index: ch.message.content or "" for ch in out.choices}
        tokens = {ch.index: len(ch.logprobs.content) for ch in out.choices}
        usage = out.usage
    assert len(set(texts.values())) > 1, "sampled choices should differ"
    # usage counts every choice.
    assert usage.completion_tokens == sum(tokens.values())
    # With a seed, the choices come back the same.
    again = c.chat.completions.create(**args)
    assert [ch.message.content for ch in again.choices] == [texts[i] for i in range(3)]


def test_greedy_extensions(engine_stack) -> None:
    greedy = _text(engine_stack, prompt=COUNTING, max_tokens=10)
    hot = {"prompt": COUNTING, "max_tokens": 10, "temperature": 1.5, "seed": 3}
    # top_k 1 and min_p 1 keep only the likeliest token: greedy at any temperature.
    assert _text(engine_stack, **hot, extra_body={"top_k": 1}) == greedy
    assert _text(engine_stack, **hot, extra_body={"min_p": 1.0}) == greedy


def test_penalties_and_bias_change_the_text(engine_stack) -> None:
    plain = _text(engine_stack, prompt=COUNTING, max_tokens=12)
    assert plain.startswith(" 1")
    assert _text(engine_stack, prompt=COUNTING, max_tokens=12, frequency_penalty=2) != plain
    assert (
        _text(engine_stack, prompt=COUNTING, max_tokens=12, extra_body={"repeat_penalty": 1.5})
        != plain
    )
    one = _tokens(engine_stack, " 1")[-1]
    banned = _text(engine_stack, prompt=COUNTING, max_tokens=12, logit_bias={str(one): -100})
    assert "1" not in banned


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stop_strings_never_appear(engine_stack, stream: bool) -> None:
    plain = _text(engine_stack, prompt=COUNTING, max_tokens=12)
    # ", 1" straddles tokens (",", " ", "1"): held back until it cannot match.
    stops = [", 1", "zz", "qq", "xx"]
    args = {"model": MODEL, "prompt": COUNTING, "max_tokens": 12, "temperature": 0, "stop": stops}
    if stream:
        text = "".join(
            c.text
            for ch in client(engine_stack).completions.create(**args, stream=True)
            for c in ch.choices
        )
    else:
        text = client(engine_stack).completions.create(**args).choices[0].text
    assert text == plain[: plain.index(", 1")]
    assert not any(s in text for s in stops)


def test_max_completion_tokens(engine_stack) -> None:
    out = client(engine_stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to twenty."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"


def test_n_beyond_a_batched_workers_slots_is_a_400(engine_stack, request) -> None:
    """A batched worker holds one choice per slot (4 here): more is the
    client's 400 at the gateway, never a failed job. One sequence at a time
    (llama) runs them one after another."""
    args = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "n": 5}
    if request.node.callspec.params["engine_stack"] == "batched":
        with pytest.raises(openai.BadRequestError) as info:
            client(engine_stack).completions.create(**args)
        assert info.value.body["param"] == "n"
    else:
        out = client(engine_stack).completions.create(**args)
        assert [c.index for c in out.choices] == [0, 1, 2, 3, 4]
