"""Property-based fuzzing of every endpoint: thousands of malformed
and hostile bodies and headers against a real gateway process on loopback,
with a real redis-server and an echo worker. Properties: never a 5xx, every
error an OpenAI-shaped body, an X-Request-ID on every response, no job
enqueued for a rejected request, and the gateway healthy afterwards."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import ECHO

KEY = "sk-fuzz-0d9c2b"
JOB_CREATING = {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/jobs")}
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/jobs",
    "/health",
    "/ready",
    "/metrics",
    "/openapi.json",
    "/v1/jobs/chatcmpl-0",
    "/v1/jobs/chatcmpl-0/events",
    "/v1/jobs/%00",
    "/v1/jobs/..%2F..%2Fetc",
    "/v1",
    "/",
    "/v1/chat/completions/",
    "/V1/CHAT/COMPLETIONS",
    "/v1/models/echo-test",
    "/%ff%fe",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
# Half the examples go to a job-creating endpoint, where most of the parsing is.
TARGET = st.one_of(
    st.sampled_from(sorted(JOB_CREATING)),
    st.tuples(st.sampled_from(METHODS), st.sampled_from(PATHS)),
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
CHAT = {"model": "echo-test", "messages": [{"role": "user", "content": "fuzz me"}], "max_tokens": 2}
COMPLETION = {"model": "echo-test", "prompt": "fuzz me", "max_tokens": 2}
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "n",
    "tools",
    "logprobs",
    "timeout",
    "prompt",
    "user",
    "response_format",
    "unknown_field",
    "__proto__",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with fields replaced, added or dropped: reaches deep
    into validation rather than failing at the first byte."""
    body: dict[str, Any] = dict(draw(st.sampled_from([CHAT, COMPLETION])))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["set", "set", "drop", "message"]))
        if action == "drop":
            body.pop(field, None)
        elif action == "message":
            msg = draw(
                st.dictionaries(st.sampled_from(["role", "content", "name", "x"]), JSON, max_size=3)
            )
            body["messages"] = [msg, *draw(st.lists(st.just(msg), max_size=2))]
        else:
            body[field] = draw(JSON)
    # Keep accepted jobs cheap for the echo worker.
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 64:
        body["max_tokens"] = draw(st.integers(-5, 64))
    return json.dumps(body).encode()


HUGE = (
    b'{"model": "echo-test", "messages": [{"role": "user", "content": "'
    + b"A" * (1 << 20)
    + b'"}]}'
)
HOSTILE = st.sampled_from(
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"\xff\xfe\xfd",
        b'{"model": "echo-test", "messages": "\xc3\x28"}',
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"[" * 200_000,
        b'{"model": 1e999}',
        b'{"model": "echo-test", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "echo-test", "model": "other", "messages": []}',
        b"\x00" * 64,
        b'{"messages": [' + b'{"role":"user","content":"x"},' * 300 + b"{}]}",
        HUGE,
    ]
)
# Valid requests with unknown extra fields (ignored by design, like OpenAI's
# clients expect), streamed or not: these must run as jobs.
VALID = st.tuples(
    st.sampled_from([CHAT, COMPLETION]),
    st.booleans(),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in FIELDS), JSON, max_size=2),
).map(lambda t: json.dumps({**t[2], **t[0], "stream": t[1]}).encode())
BODY = st.one_of(
    mutated(), VALID, HOSTILE, st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode())
)

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(
    str.strip
)  # h11 refuses to send surrounding whitespace
AUTH = st.one_of(
    st.just({"Authorization": f"Bearer {KEY}"}),  # mostly valid: reach past auth
    st.just({"Authorization": f"bearer  {KEY}"}),
    st.sampled_from(
        [
            {},
            {"Authorization": "Bearer"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": f"Bearer {KEY}x"},
        ]
    ),
    HEADER_TEXT.map(lambda t: {"Authorization": ("Bearer " + t).strip()}),
    HEADER_TEXT.map(lambda t: {"Authorization": t}),
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.one_of(
            st.just("application/json"),
            st.just("text/plain"),
            st.just("multipart/form-data; boundary=x"),
            st.just("application/x-www-form-urlencoded"),
            HEADER_TEXT,
        ),
        "X-Request-ID": HEADER_TEXT,
        "Idempotency-Key": HEADER_TEXT,
        "Accept": st.one_of(st.just("text/event-stream"), HEADER_TEXT),
        "Origin": HEADER_TEXT,
        "Access-Control-Request-Method": st.sampled_from(["POST", "GET", "x"]),
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x"]),
        "Last-Event-ID": HEADER_TEXT,
    },
)


def check_response(resp: httpx.Response, method: str, path: str) -> None:
    assert resp.status_code < 500, (method, path, resp.status_code, resp.text[:300])
    assert resp.headers.get("x-request-id"), (method, path)
    if resp.status_code >= 400 and method != "HEAD":
        body = resp.json()
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
        assert isinstance(err["type"], str)
        assert err["param"] is None or isinstance(err["param"], str)
        assert err["code"] is None or isinstance(err["code"], str)
        assert "Traceback" not in err["message"]


@pytest.fixture
def fuzz_gateway(start_worker, start_gateway):
    start_worker(**ECHO)
    # Keys on, with generous limits so the rate-limit path runs on every job.
    return start_gateway(
        OPENAI_API_KEY_REQUIRED="true",
        OPENAI_API_KEY=KEY,
        RATE_LIMIT_RPM="1000000",
        RATE_LIMIT_TPM="100000000",
    )


def test_fuzz_every_endpoint(fuzz_gateway, r):
    accepted = 0
    seen_statuses: set[int] = set()
    with httpx.Client(base_url=fuzz_gateway.url, timeout=30) as client:

        @settings(
            max_examples=2500, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(target=TARGET, body=BODY, auth=AUTH, headers=HEADERS)
        @example(
            target=("POST", "/v1/chat/completions"),
            body=HUGE,
            auth={"Authorization": f"Bearer {KEY}"},
            headers={},
        )
        @example(
            target=("POST", "/v1/completions"),
            body=json.dumps(COMPLETION).encode(),
            auth={"Authorization": f"Bearer {KEY}"},
            headers={"Content-Encoding": "br"},
        )
        def one(
            target: tuple[str, str], body: bytes, auth: dict[str, str], headers: dict[str, str]
        ) -> None:
            nonlocal accepted
            method, path = target
            headers = {**headers, **auth}
            before = sum(1 for _ in r.scan_iter("sw:*:job:*", count=1000))
            resp = client.request(method, path, content=body or None, headers=headers)
            check_response(resp, method, path)
            seen_statuses.add(resp.status_code)
            created = sum(1 for _ in r.scan_iter("sw:*:job:*", count=1000)) - before
            if resp.status_code >= 400:
                assert created == 0, (method, path, resp.status_code, body[:200])
            if (method, path) in JOB_CREATING and resp.status_code < 300:
                accepted += 1

        one()

    # Plenty of kinds of refusal were reached, not just one early exit, and
    # some mutated requests were valid and ran as jobs.
    assert {400, 401, 404, 405, 413, 415} <= seen_statuses, seen_statuses
    assert accepted > 0
    print(f"statuses {sorted(seen_statuses)}, accepted jobs {accepted}")
    assert httpx.get(fuzz_gateway.url + "/health", timeout=5).status_code == 200
    ready = httpx.get(fuzz_gateway.url + "/ready", timeout=5)
    assert ready.status_code == 200, ready.text
    good = httpx.post(
        fuzz_gateway.url + "/v1/chat/completions",
        json=CHAT,
        timeout=10,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]
    assert "unhandled error" not in fuzz_gateway.output()
