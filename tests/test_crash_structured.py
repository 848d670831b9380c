"""Constrained decoding and n choices survive kill -9 of the worker: the job
is enqueued as the gateway enqueues it, the worker running it is killed in
the middle of the JSON object, another worker resumes it, and the text in
the log (exactly what any client received) parses and validates, with no
duplicate and no gap."""

from __future__ import annotations

import json

import anyio
import jsonschema
from llama_cpp.llama_grammar import json_schema_to_gbnf
from redis.asyncio import Redis

from streamworker.protocol.client import JobClient
from streamworker.protocol.scripts import Scripts
from streamworker.protocol.settings import QueueSettings
from streamworker.protocol.wire import GenerationParams, JobRequest, Message, decode_log
from tests.harness import wait_for

MODEL = "gemma-3-270m"
STREAM = "sw:{gemma-3-270m}:jobs"
FAST_LEASE = {"JOB_LEASE_SECONDS": "1", "MODEL_N_THREADS": "2"}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 12},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "pets"],
    "additionalProperties": False,
}
ASK = [Message("user", "Describe a person as JSON.")]


def enqueue(redis_url: str, job_id: str, params: GenerationParams) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        try:
            client = JobClient(redis, Scripts(redis), QueueSettings())
            await client.enqueue(MODEL, job_id, JobRequest(messages=ASK, params=params))
        finally:
            await redis.aclose()

    anyio.run(main)


def log_of(r, job_id: str) -> list:  # type: ignore[no-untyped-def]
    return decode_log(r.lrange(f"sw:{{{MODEL}}}:log:{job_id}", 0, -1))


def record(r, job_id: str) -> dict[bytes, bytes]:  # type: ignore[no-untyped-def]
    return r.hgetall(f"sw:{{{MODEL}}}:job:{job_id}")


def finished(r, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    return record(r, job_id).get(b"status") in (b"completed", b"failed")


def kill_when(r, workers: dict, job_id: str, ready) -> str:  # type: ignore[no-untyped-def]
    """SIGKILL the worker that owns the job once `ready(log)` holds."""
    wait_for(lambda: ready(log_of(r, job_id)) or finished(r, job_id), timeout=120, what="tokens")
    assert not finished(r, job_id), "the job ended before the kill"
    (owner,) = {p["consumer"].decode() for p in r.xpending_range(STREAM, "workers", "-", "+", 10)}
    workers[owner].kill()
    return owner


def choice_text(entries: list, choice: int) -> str:
    return "".join(e.text for e in entries if e.choice == choice)


def test_kill9_mid_json_object_resumes_valid_and_identical(start_worker, redis_url, r):
    """Temperature 0, llama engine: the resumed job's text is the
    uninterrupted run's, and it validates against the schema."""
    workers = {n: start_worker(name=n, **FAST_LEASE) for n in ("j1", "j2")}
    params = GenerationParams(
        max_tokens=120, temperature=0, grammar=json_schema_to_gbnf(json.dumps(SCHEMA))
    )
    enqueue(redis_url, "reference", params)
    wait_for(lambda: finished(r, "reference"), timeout=120, what="the reference job")
    reference = record(r, "reference")[b"text"].decode()
    jsonschema.validate(json.loads(reference), SCHEMA)

    enqueue(redis_url, "crashed", params)
    # Inside the object: past `{ "name": ...`, before the closing brace.
    kill_when(r, workers, "crashed", lambda log: len(log) >= 8)
    wait_for(lambda: finished(r, "crashed"), timeout=120, what="the resumed job")
    rec = record(r, "crashed")
    assert rec[b"status"] == b"completed" and rec[b"attempt"] == b"2"
    entries = log_of(r, "crashed")
    text = choice_text(entries, 0)
    assert text == rec[b"text"].decode() == reference  # no duplicate, no gap
    jsonschema.validate(json.loads(text), SCHEMA)
    assert [e.finish for e in entries if e.finish] == ["stop"]


def test_kill9_with_n_choices_resumes_each_choice(start_worker, redis_url, r):
    """n=2 on batched workers: killed while both choices are mid-object;
    each choice continues after its own logged prefix and validates, and
    each ends once."""
    env = {**FAST_LEASE, "ENGINE": "batched", "WORKER_CONCURRENCY": "2"}
    workers = {n: start_worker(name=n, **env) for n in ("b1", "b2")}
    params = GenerationParams(
        max_tokens=120,
        temperature=0.8,
        seed=3,
        n=2,
        grammar=json_schema_to_gbnf(json.dumps(SCHEMA)),
        logprobs=True,
    )
    enqueue(redis_url, "choices", params)

    def both_started(log: list) -> bool:
        return all(sum(1 for e in log if e.choice == c) >= 4 for c in (0, 1))

    kill_when(r, workers, "choices", both_started)
    wait_for(lambda: finished(r, "choices"), timeout=120, what="the resumed job")
    rec = record(r, "choices")
    assert rec[b"status"] == b"completed" and rec[b"attempt"] == b"2"
    entries = log_of(r, "choices")
    choices = json.loads(rec[b"choices"])
    for c in (0, 1):
        text = choice_text(entries, c)
        assert choices[c] == {"index": c, "text": text, "finish_reason": "stop"}
        jsonschema.validate(json.loads(text), SCHEMA)
        assert [e.finish for e in entries if e.choice == c and e.finish] == ["stop"]
        # Logprobs were logged with every token, before and after the crash.
        assert all(e.logprob is not None for e in entries if e.choice == c and e.token >= 0)
    assert json.loads(rec[b"text"]) == json.loads(choices[0]["text"])
    generated = sum(1 for e in entries if e.token >= 0)
    assert int(rec[b"completion_tokens"]) == generated
