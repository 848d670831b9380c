"""The gateway counts prompt tokens exactly as the worker does, with the
worker's CHAT_FORMAT, so the context check before enqueue agrees with the
`usage.prompt_tokens` the worker reports."""

from __future__ import annotations

from streamworker.engines.model_file import resolve_model_path
from streamworker.protocol.wire import Message
from streamworker.tokenizer import load_vocabulary
from tests.conftest import client_for

MODEL = "gemma-3-270m"
TPM = 1_000_000
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Name a river in Europe, and say why it matters."},
]


def gateway_count(headers, max_tokens: int) -> int:
    """The gateway reserves prompt + max_tokens from a fresh token bucket:
    what is left tells how many prompt tokens it counted."""
    return TPM - max_tokens - int(headers["x-ratelimit-remaining-tokens"])


def test_gateway_counts_with_the_workers_chat_format(start_worker, start_gateway):
    # chatml is not the default (the bundled model gets llama.cpp's gemma
    # format): a gateway rendering with the default would count differently.
    start_worker(name="chatml", CHAT_FORMAT="chatml")
    gateway = start_gateway(RATE_LIMIT_TPM=str(TPM))
    client = client_for(gateway, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0
    )
    usage = raw.parse().usage
    assert gateway_count(raw.headers, 4) == usage.prompt_tokens

    path = str(resolve_model_path(""))
    messages = [Message(m["role"], m["content"]) for m in MESSAGES]
    assert load_vocabulary(path, "chatml").count(messages) == usage.prompt_tokens
    # The check would fail if the gateway ignored CHAT_FORMAT.
    assert load_vocabulary(path).count(messages) != usage.prompt_tokens
