"""Retrieval-augmented chat combined with structured output and with forced
tool calls, through the `openai` client on the bundled model: the answer
keeps the requested shape (the grammar constrains it) and carries the
retrieved sources, whole and streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import client_for
from tests.harness import Gateway, RedisServer, Worker

MODEL = "gemma-3-270m"
DOCS = {
    "danube": "The Danube flows through Vienna, Bratislava, Budapest and Belgrade.",
    "nile": "The Nile flows north through Uganda, Sudan and Egypt into the Mediterranean.",
    "kilimanjaro": "Mount Kilimanjaro in Tanzania is the highest mountain in Africa.",
}
ASK = [{"role": "user", "content": "Which city on the Danube is the capital of Hungary?"}]
RAG = {"rag": {"collection": "rivers", "top_k": 2}}


class City(BaseModel):
    name: str
    country: str


CITY_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": City.model_json_schema(), "strict": True},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_city",
        "description": "Look a city up by name.",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        },
    },
}
FORCED = {"type": "function", "function": {"name": "lookup_city"}}


@pytest.fixture(scope="module")
def gateway(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    if not redis_server.ping():
        redis_server.start()
    logs = tmp_path_factory.mktemp("rag-structured")
    worker = Worker(redis_server.url, logs / "worker.log", "rag-structured", ENGINE="llama")
    gw = Gateway(
        redis_server.url, logs / "gateway.log", EMBEDDING_MODEL=MODEL, QDRANT_PATH=str(logs / "q")
    )
    try:
        worker.start(wait_registered=True, redis=redis_server)
        gw.start()
        api = gw.url + "/api/v1"
        assert httpx.post(api + "/collections", json={"name": "rivers"}, timeout=120).is_success
        for doc_id, text in DOCS.items():
            r = httpx.put(
                f"{api}/collections/rivers/documents/{doc_id}", json={"text": text}, timeout=120
            )
            assert r.status_code == 200, r.text
        yield gw
    finally:
        gw.stop(timeout=10)
        worker.stop(timeout=20)


def _client(gw: Gateway) -> openai.OpenAI:
    return client_for(gw, timeout=120)


def _assert_sources(sources: object) -> None:
    assert isinstance(sources, list) and len(sources) == 2, sources
    assert {s["document_id"] for s in sources} <= set(DOCS)
    assert "danube" in {s["document_id"] for s in sources}


def _streamed_sources(gw: Gateway, body: dict[str, object]) -> tuple[list[str], object]:
    """The raw stream's data frames, and the sources event's list."""
    datas: list[str] = []
    sources: object = None
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "sources":
                    sources = json.loads(line[6:])["sources"]
                else:
                    datas.append(line[6:])
                event = ""
    assert datas[-1] == "[DONE]"
    return datas[:-1], sources


def test_json_schema_answer_with_sources(gateway: Gateway) -> None:
    out = _client(gateway).chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        response_format=CITY_FORMAT,  # type: ignore[arg-type]
        max_tokens=64,
        temperature=0,
        extra_body=RAG,
    )
    City.model_validate_json(out.choices[0].message.content or "")
    _assert_sources(out.model_extra["sources"])  # type: ignore[index]


def test_streamed_json_schema_answer_with_sources(gateway: Gateway) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "response_format": CITY_FORMAT,
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        **RAG,
    }
    datas, sources = _streamed_sources(gateway, body)
    chunks = [json.loads(d) for d in datas]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    City.model_validate_json(text)
    _assert_sources(sources)


def test_forced_tool_call_with_sources(gateway: Gateway) -> None:
    out = _client(gateway).chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice=FORCED,  # type: ignore[arg-type]
        max_tokens=64,
        temperature=0,
        extra_body=RAG,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "lookup_city"
    assert isinstance(json.loads(calls[0].function.arguments)["name"], str)
    _assert_sources(out.model_extra["sources"])  # type: ignore[index]


def test_streamed_required_tool_call_with_sources(gateway: Gateway) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [TOOL],
        "tool_choice": "required",
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        **RAG,
    }
    datas, sources = _streamed_sources(gateway, body)
    chunks = [json.loads(d) for d in datas]
    calls = [
        tc
        for c in chunks
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls and calls[0]["function"]["name"] == "lookup_city"
    args = "".join(tc["function"].get("arguments") or "" for tc in calls)
    assert isinstance(json.loads(args)["name"], str)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    _assert_sources(sources)
