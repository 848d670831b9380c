"""Tokenizer endpoints like llama-server's (`POST /tokenize`, `/detokenize`,
served by the gateway with the workers' own vocabulary) and the SDKs'
`models.retrieve` (`GET /v1/models/{id}`), with their errors in OpenAI's
shape."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import client_for

MODEL = "gemma-3-270m"


@pytest.fixture
def model_gateway(start_gateway, start_worker):
    start_worker(name="tok-1")
    return start_gateway()


def _post(gateway, path: str, body: dict) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, timeout=30)


def test_tokenize_and_detokenize(model_gateway) -> None:
    text = "Hello world, ça va?"
    plain = _post(model_gateway, "/tokenize", {"model": MODEL, "content": text}).json()["tokens"]
    special = _post(
        model_gateway, "/tokenize", {"model": MODEL, "content": text, "add_special": True}
    ).json()["tokens"]
    assert special[1:] == plain and len(special) == len(plain) + 1  # BOS first
    back = _post(model_gateway, "/detokenize", {"model": MODEL, "tokens": plain}).json()
    assert back == {"content": text}
    # The model may be left out when one model is served, as with llama-server.
    assert _post(model_gateway, "/tokenize", {"content": text}).json()["tokens"] == plain


def test_with_pieces(model_gateway) -> None:
    out = _post(
        model_gateway, "/tokenize", {"model": MODEL, "content": "Hi 🙂", "with_pieces": True}
    ).json()["tokens"]
    assert all(set(t) == {"id", "piece"} for t in out)
    # A piece that is not whole UTF-8 comes as its bytes, as llama-server sends it.
    joined = b"".join(
        t["piece"].encode() if isinstance(t["piece"], str) else bytes(t["piece"]) for t in out
    )
    assert joined.decode() == "Hi 🙂"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": "nope", "content": "x"}, 404, "model"),
        ("/tokenize", {"model": MODEL}, 400, None),
        ("/tokenize", {"model": MODEL, "content": 5}, 400, "content"),
        ("/detokenize", {"model": MODEL, "tokens": [1, 10**9]}, 400, "tokens[1]"),
        ("/detokenize", {"model": MODEL, "tokens": "abc"}, 400, "tokens"),
    ],
)
def test_tokenizer_errors(model_gateway, path, body, status, param) -> None:
    resp = _post(model_gateway, path, body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param


def test_a_model_without_a_readable_file_says_so(echo_stack) -> None:
    gateway, _ = echo_stack
    resp = _post(gateway, "/tokenize", {"model": "echo-test", "content": "x"})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "tokenizer_unavailable"


def test_models_retrieve(echo_stack) -> None:
    gateway, _ = echo_stack
    client = client_for(gateway)
    card = client.models.retrieve("echo-test")
    assert (card.id, card.object, card.owned_by) == ("echo-test", "model", "streamworker")
    assert card.created > 0
    assert [m.id for m in client.models.list()] == ["echo-test"]
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-17")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


def test_token_ids_outside_the_vocabulary_are_400s(model_gateway) -> None:
    """Where the gateway reads the model's vocabulary, a prompt or bias that
    names a token the model lacks is the client's 400, never a failed job."""
    client = client_for(model_gateway)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[2, 10**7], max_tokens=1)
    assert info.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=MODEL, prompt="hi", max_tokens=1, logit_bias={str(10**7): -100}
        )
    assert info.value.body["param"] == "logit_bias"
