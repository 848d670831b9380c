"""Security and hardening: API keys, per-key rate limits, production
mode, CORS, request ids and what the logs may hold, context length before
enqueue, Redis with a password and with TLS. Real redis-server, real gateway
and worker processes, the `openai` client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import redis as redis_sync

from tests.conftest import ECHO, client_for
from tests.harness import PYTHON, ROOT, Gateway, Service, Worker, free_port, wait_for

KEY = "sk-test-3b1f0c9e7d"
CHAT = {"model": "echo-test", "messages": [{"role": "user", "content": "hello there"}]}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_file(tmp_path: Path, *entries: dict[str, object]) -> str:
    lines = []
    for e in entries:
        lines.append("[[keys]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in e.items()]
    path = tmp_path / "keys.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    return err


def job_records(r: redis_sync.Redis) -> list[bytes]:
    return list(r.scan_iter("sw:*:job:*"))


# -- authentication -----------------------------------------------------------


def test_api_key_required(start_worker, start_gateway, tmp_path, r):
    start_worker(**ECHO)
    path = keys_file(
        tmp_path,
        {"name": "alice", "sha256": sha("sk-alice")},
        {"name": "bob", "sha256": sha("sk-bob").upper()},
    )
    gw = start_gateway(OPENAI_API_KEY_REQUIRED="true", OPENAI_API_KEY=KEY, API_KEYS_FILE=path)

    for bad in ("wrong-key", KEY + "x", "SK-ALICE"):
        with pytest.raises(openai.AuthenticationError) as info:
            client_for(gw, api_key=bad).chat.completions.create(**CHAT, max_tokens=2)
        assert info.value.code == "invalid_api_key"
        assert info.value.status_code == 401
    missing = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert_openai_error(missing, 401, "invalid_api_key")
    assert not job_records(r)  # nothing enqueued for a refused request

    for good in (KEY, "sk-alice", "sk-bob"):  # the env key and both file keys
        out = client_for(gw, api_key=good).chat.completions.create(**CHAT, max_tokens=2)
        assert out.choices[0].message.content == "hello there "
    assert [m.id for m in client_for(gw, api_key=KEY).models.list()] == ["echo-test"]
    with pytest.raises(openai.AuthenticationError):
        client_for(gw, api_key="nope").models.list()

    # /health always open; /ready and /metrics open unless asked otherwise.
    for path_ in ("/health", "/ready", "/metrics"):
        assert httpx.get(gw.url + path_, timeout=5).status_code == 200


def test_ops_endpoints_can_require_a_key(start_worker, start_gateway):
    start_worker(**ECHO)
    gw = start_gateway(
        OPENAI_API_KEY_REQUIRED="true", OPENAI_API_KEY=KEY, OPS_ENDPOINTS_REQUIRE_KEY="true"
    )
    assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
    auth = {"Authorization": f"Bearer {KEY}"}
    for path_ in ("/ready", "/metrics"):
        assert_openai_error(httpx.get(gw.url + path_, timeout=5), 401, "invalid_api_key")
        assert httpx.get(gw.url + path_, headers=auth, timeout=5).status_code == 200


def test_keys_not_required_by_default(echo_stack):
    gateway, _ = echo_stack
    out = client_for(gateway, api_key="anything").chat.completions.create(**CHAT, max_tokens=1)
    assert out.choices[0].finish_reason == "length"


def test_refuses_to_start_without_keys(redis_url, tmp_path):
    cases = [
        {"ENVIRONMENT": "production"},
        {"OPENAI_API_KEY_REQUIRED": "true"},
        {"ENVIRONMENT": "production", "API_KEYS_FILE": str(tmp_path / "missing.toml")},
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\nname = "x"\nsha256 = "not-a-hash"\n')
    cases.append({"ENVIRONMENT": "production", "API_KEYS_FILE": str(bad)})
    for env in cases:
        gw = Gateway(redis_url, tmp_path / "gw.log", **env)
        Service.start(gw)  # not Gateway.start: it would wait for /health
        assert gw.wait(30) == 2, gw.output()
        assert "refusing to start" in gw.output()


def test_hash_key_cli():
    out = subprocess.run(
        [PYTHON, "-m", "gateway", "hash-key", "--name", "alice"],
        input="sk-secret\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert f'sha256 = "{sha("sk-secret")}"' in out.stdout
    assert 'name = "alice"' in out.stdout
    assert "sk-secret" not in out.stdout + out.stderr
    gen = subprocess.run(
        [PYTHON, "-m", "gateway", "hash-key", "--generate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    key = gen.stderr.rsplit(" ", 1)[1].strip()
    assert key.startswith("sk-") and f'sha256 = "{sha(key)}"' in gen.stdout


# -- rate limits --------------------------------------------------------------


def test_rate_limit_tokens_retry_after_honoured(start_worker, start_gateway, tmp_path, r):
    start_worker(**ECHO)
    # 6000 tokens/minute refill at 100/s; each request reserves 1000 + prompt.
    path = keys_file(
        tmp_path,
        {"name": "tok", "sha256": sha("sk-tok"), "tpm": 6000},
        {"name": "free", "sha256": sha("sk-free"), "tpm": 0, "rpm": 0},
    )
    gw = start_gateway(OPENAI_API_KEY_REQUIRED="true", API_KEYS_FILE=path, RATE_LIMIT_TPM="1000000")
    client = client_for(gw, api_key="sk-tok")
    accepted = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(10):
            raw = client.chat.completions.with_raw_response.create(**CHAT, max_tokens=1000)
            assert raw.headers["x-ratelimit-limit-tokens"] == "6000"
            assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 6000
            assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")
            assert "x-ratelimit-limit-requests" not in raw.headers  # rpm unlimited
            accepted += 1
    assert accepted >= 5  # 6000 tokens hold five 1007-token requests (more if refilled meanwhile)
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    headers = err.response.headers
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 60_000
    assert int(headers["retry-after"]) == -(-wait_ms // 1000)
    assert headers["x-ratelimit-remaining-tokens"] is not None
    assert len(job_records(r)) == accepted  # the refused request enqueued nothing

    # Honour Retry-After by hand: after waiting, the same request succeeds.
    time.sleep(wait_ms / 1000)
    out = client.chat.completions.create(**CHAT, max_tokens=1000)
    assert out.usage.completion_tokens == 1000

    # The openai client honours retry-after-ms by itself when allowed to retry.
    retrying = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-tok", max_retries=3)
    out = retrying.chat.completions.create(**CHAT, max_tokens=1000)
    assert out.choices[0].finish_reason == "length"

    # Another key is not affected; a request larger than the whole budget is a 400.
    client_for(gw, api_key="sk-free").chat.completions.create(**CHAT, max_tokens=1000)
    with pytest.raises(openai.BadRequestError) as big:
        client.chat.completions.create(**CHAT, max_tokens=6000)
    assert big.value.code == "tokens_exceed_rate_limit"


def test_rate_limit_requests_shared_across_gateways(start_worker, start_gateway, tmp_path):
    start_worker(**ECHO)
    path = keys_file(tmp_path, {"name": "two", "sha256": sha("sk-two"), "rpm": 2})
    env = {
        "OPENAI_API_KEY_REQUIRED": "true",
        "API_KEYS_FILE": path,
        "OPENAI_API_KEY": KEY,
        "RATE_LIMIT_RPM": "1000",
    }
    gw1, gw2 = start_gateway(**env), start_gateway(**env)
    a, b = client_for(gw1, api_key="sk-two"), client_for(gw2, api_key="sk-two")
    first = a.chat.completions.with_raw_response.create(**CHAT, max_tokens=1)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    b.chat.completions.create(**CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        a.chat.completions.create(**CHAT, max_tokens=1)
    headers = info.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 30  # one request refills in 30 s at 2/min
    # The default key gets the settings' default limit, its own budget.
    raw = client_for(gw2, api_key=KEY).chat.completions.with_raw_response.create(
        **CHAT, max_tokens=1
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    # Streamed responses carry them too (added before the headers go out).
    with httpx.stream(
        "POST",
        gw1.url + "/v1/chat/completions",
        timeout=10,
        json={**CHAT, "max_tokens": 2, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert int(resp.headers["x-ratelimit-remaining-requests"]) < 1000
        resp.read()


# -- production mode, CORS, request ids --------------------------------------------


def test_production_mode(start_worker, start_gateway):
    start_worker(**ECHO)
    dev = start_gateway(OPENAI_API_KEY_REQUIRED="true", OPENAI_API_KEY=KEY)
    doc = httpx.get(dev.url + "/openapi.json", timeout=5).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(doc["paths"])
    prod = start_gateway(
        ENVIRONMENT="production",
        OPENAI_API_KEY=KEY,
        LOG_LEVEL="DEBUG",
        OPENAI_API_KEY_REQUIRED="false",
    )
    resp = httpx.get(
        prod.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    )
    assert_openai_error(resp, 404)  # the API document is not served in production
    # Production enforces keys even with OPENAI_API_KEY_REQUIRED=false.
    with pytest.raises(openai.AuthenticationError):
        client_for(prod, api_key="wrong").chat.completions.create(**CHAT, max_tokens=1)
    client_for(prod, api_key=KEY).chat.completions.create(**CHAT, max_tokens=1)
    lines = [json.loads(x) for x in prod.output().splitlines() if x.startswith("{")]
    assert not [x for x in lines if x["level"] == "DEBUG"]
    assert any("LOG_LEVEL raised to INFO" in x["message"] for x in lines)


def test_cors_off_unless_configured(start_worker, start_gateway):
    start_worker(**ECHO)
    origin = {"Origin": "https://app.example.com"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    off = start_gateway()
    resp = httpx.options(off.url + "/v1/chat/completions", headers=preflight, timeout=5)
    assert_openai_error(resp, 405)
    resp = httpx.post(
        off.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}, headers=origin, timeout=10
    )
    assert resp.status_code == 200
    assert not [h for h in resp.headers if h.lower().startswith("access-control")]

    on = start_gateway(
        CORS_ALLOW_ORIGINS="https://app.example.com",
        OPENAI_API_KEY_REQUIRED="true",
        OPENAI_API_KEY=KEY,
    )
    resp = httpx.options(on.url + "/v1/chat/completions", headers=preflight, timeout=5)
    assert resp.status_code == 204  # preflight needs no key
    assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "Authorization" in resp.headers["access-control-allow-headers"]
    resp = httpx.post(
        on.url + "/v1/chat/completions",
        json={**CHAT, "max_tokens": 1},
        headers={**origin, "Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
    other = httpx.get(on.url + "/health", headers={"Origin": "https://evil.example"}, timeout=5)
    assert "access-control-allow-origin" not in other.headers


def test_request_id_on_every_response(echo_stack):
    gateway, _ = echo_stack
    url = gateway.url + "/v1/chat/completions"
    given = {"X-Request-ID": "client-req-42"}
    assert (
        httpx.post(url, json={**CHAT, "max_tokens": 1}, headers=given, timeout=10).headers[
            "x-request-id"
        ]
        == "client-req-42"
    )
    with httpx.stream(
        "POST", url, json={**CHAT, "max_tokens": 2, "stream": True}, headers=given, timeout=10
    ) as resp:
        assert resp.headers["x-request-id"] == "client-req-42"
        resp.read()
    for resp in (
        httpx.get(gateway.url + "/nope", timeout=5),
        httpx.post(url, content=b"{", timeout=5),
        httpx.get(gateway.url + "/health", headers={"X-Request-ID": "bad id\t<x>"}, timeout=5),
    ):
        rid = resp.headers["x-request-id"]
        assert len(rid) == 32 and int(rid, 16) >= 0  # generated: malformed ids are replaced


# -- logs -----------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_logs_hold_ids_never_keys_or_prompts(start_worker, start_gateway):
    secret_prompt = "the-launch-code-is-7731-zebra"
    worker = start_worker(**ECHO)
    gw = start_gateway(OPENAI_API_KEY_REQUIRED="true", OPENAI_API_KEY=KEY)
    client = client_for(gw, api_key=KEY, default_headers={"X-Request-ID": "trace-me-1"})
    raw = client.chat.completions.with_raw_response.create(
        model="echo-test", messages=[{"role": "user", "content": secret_prompt}], max_tokens=3
    )
    job_id = raw.parse().id
    with pytest.raises(openai.AuthenticationError):
        client_for(gw, api_key="sk-wrong-" + KEY).models.list()
    wait_for(lambda: job_id in worker.output(), timeout=10, what="worker job log line")
    gw.stop()
    worker.stop()
    logs = gw.output() + worker.output()
    assert KEY not in logs
    assert "Bearer" not in logs and "authorization" not in logs.lower()
    assert secret_prompt not in logs
    assert "7731" not in logs
    gw_lines = [x for x in _json_lines(gw.output()) if x.get("request_id") == "trace-me-1"]
    assert gw_lines and all(x.get("job_id") == job_id for x in gw_lines if "POST" in x["message"])
    w_lines = [x for x in _json_lines(worker.output()) if x.get("job_id") == job_id]
    assert w_lines and all(x.get("request_id") == "trace-me-1" for x in w_lines)
    for line in _json_lines(logs):
        assert {"timestamp", "level", "logger", "message"} <= set(line)


def test_prompt_logged_only_with_opt_in(start_worker, start_gateway):
    start_worker(**ECHO)
    gw = start_gateway(LOG_LEVEL="DEBUG", LOG_PROMPTS="true")
    client_for(gw).chat.completions.create(
        model="echo-test",
        messages=[{"role": "user", "content": "opt-in-prompt-text"}],
        max_tokens=1,
    )
    gw.stop()
    assert "opt-in-prompt-text" in gw.output()  # the capture above would see a leak


# -- context length ------------------------------------------------------------------


def test_context_length_checked_before_enqueue(start_worker, start_gateway, r):
    # The real model (bundled gemma-3-270m) with a small context: the gateway
    # loads its vocabulary and counts the prompt exactly.
    start_worker(
        name="llama", ENGINE="llama", MODEL_NAME="gemma", MODEL_N_CTX="256", MODEL_N_GPU_LAYERS="0"
    )
    gw = start_gateway()
    client = client_for(gw)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": "word " * 300}], max_tokens=8
        )
    assert info.value.code == "context_length_exceeded"
    assert "256" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": "word " * 100}], max_tokens=200
        )
    assert info.value.code == "context_length_exceeded"
    assert not job_records(r)
    out = client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
    )
    assert out.usage.prompt_tokens < 256


# -- Redis with a password, and over TLS ----------------------------------------------


def _redis(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return proc


def _stack_works(redis_url: str, tmp_path: Path, services: list) -> None:
    worker = Worker(redis_url, tmp_path / "w.log", "wsec", **ECHO)
    services.append(worker)
    worker.start(wait_registered=False)
    gw = Gateway(redis_url, tmp_path / "g.log")
    services.append(gw)
    gw.start()
    wait_for(
        lambda: httpx.get(gw.url + "/ready", timeout=2).status_code == 200,
        timeout=30,
        what="ready through the secured redis",
    )
    out = client_for(gw).chat.completions.create(**CHAT, max_tokens=2)
    assert out.choices[0].message.content == "hello there "
    password = redis_url.split(":")[2].split("@")[0]
    assert password not in gw.output() + worker.output()  # the URL is never logged


def test_redis_password(tmp_path, services):
    port = free_port()
    proc = _redis(tmp_path, "--port", str(port), "--requirepass", "s3cret-pw")
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
        wait_for(lambda: redis_sync.Redis.from_url(url).ping(), timeout=10, what="redis")
        _stack_works(url, tmp_path, services)
        # A wrong password: the gateway starts (liveness) but is not ready.
        gw = Gateway(f"redis://:wrong@127.0.0.1:{port}/0", tmp_path / "bad.log")
        services.append(gw)
        gw.start()
        assert httpx.get(gw.url + "/ready", timeout=10).status_code == 503
        assert "wrong" not in gw.output()  # the password is not logged
    finally:
        for svc in reversed(services):
            svc.stop(timeout=10)
        services.clear()
        proc.terminate()
        proc.wait(10)


def test_redis_tls(tmp_path, services):
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "r.key", "r.csr", "r.pem")
    )
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cmd in (
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    port = free_port()
    proc = _redis(
        tmp_path,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-pw",
    )
    try:
        url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        wait_for(lambda: redis_sync.Redis.from_url(url).ping(), timeout=10, what="redis tls")
        # Plain TCP to the TLS port does not work: the URL scheme really matters.
        with pytest.raises(redis_sync.RedisError):
            redis_sync.Redis.from_url(
                f"redis://:tls-pw@127.0.0.1:{port}/0", socket_timeout=2
            ).ping()
        _stack_works(url, tmp_path, services)
    finally:
        for svc in reversed(services):
            svc.stop(timeout=10)
        services.clear()
        proc.terminate()
        proc.wait(10)


def test_openapi_document_covers_every_route():
    from gateway.app import create_app
    from gateway.openapi import DOCUMENT
    from gateway.settings import GatewaySettings
    from streamworker.protocol.settings import QueueSettings, RedisSettings

    app = create_app(GatewaySettings(), RedisSettings(), QueueSettings())
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m, p) for p, ops in DOCUMENT["paths"].items() for m in ops if m != "parameters"}
    routes.discard(("get", "/openapi.json"))
    assert routes <= documented, routes - documented  # every route is documented
