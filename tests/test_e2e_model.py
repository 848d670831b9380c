"""End to end with the bundled model: the official openai client against the
real gateway, a real redis-server and a llama-engine worker."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import client_for
from tests.model_stacks import batch_invariant_kernels

MODEL = "gemma-3-270m"


@pytest.fixture
def model_stack(start_gateway, start_worker):
    worker = start_worker(name="llama-1")
    gateway = start_gateway()
    return gateway, worker


def test_streaming_chunks_done_and_usage(model_stack):
    gateway, _ = model_stack
    client = client_for(gateway)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(deltas).strip(), "the model streamed no text"
    assert len([d for d in deltas if d]) > 1, "tokens should arrive as several chunks"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # The wire format: data: lines ending with [DONE].
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        timeout=60,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "stream": True,
        },
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_non_streaming_matches_in_process_llama(model_stack):
    """Temperature 0 through the whole path (the default worker: the batched
    engine) equals llama-cpp-python in-process computing the same way: flash
    attention on and weights not repacked, as that engine loads them. (With
    llama-cpp-python's defaults this base model sits on near-ties here, so
    any change of kernels changes the text; test_engine_batched compares the
    engines themselves.)"""
    gateway, _ = model_stack
    client = client_for(gateway)
    prompt = [{"role": "user", "content": "Name three colors."}]
    out = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=24, temperature=0)
    assert out.object == "chat.completion"
    assert out.usage.completion_tokens == 24 and out.usage.prompt_tokens > 0
    from llama_cpp import Llama

    from streamworker.engines.model_file import resolve_model_path

    with batch_invariant_kernels():
        llm = Llama(
            str(resolve_model_path("")),
            n_ctx=4096,
            verbose=False,
            chat_format="gemma",
            flash_attn=True,
        )
    ref = llm.create_chat_completion(prompt, temperature=0, max_tokens=24)
    llm.close()
    assert out.choices[0].message.content == ref["choices"][0]["message"]["content"]


def test_concurrent_requests_all_complete(model_stack):
    gateway, _ = model_stack
    client = client_for(gateway, timeout=120)

    def ask(i: int) -> str:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i}"}],
            max_tokens=12,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(ask, range(6)))
    assert all(t for t in texts)
