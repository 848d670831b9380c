"""One gateway and one worker on the bundled model per engine, shared by a
test module: the OpenAI-feature tests send many small requests, and
starting a model worker per test would cost more than the tests.

A module makes the fixture with `engine_stack = stack_fixture()`; it is
parametrized over both engines, so every test that takes it runs against
`ENGINE=llama` and `ENGINE=batched`. The stack's Redis is the session's
server; nothing in these modules flushes it. Any ERROR line in either
process's log fails the module at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import llama_cpp.llama_cpp
import pytest
from openai import OpenAI

from tests.harness import Gateway, RedisServer, Worker

MODEL = "gemma-3-270m"
ENGINES = {
    "llama": {"ENGINE": "llama"},
    "batched": {"ENGINE": "batched", "WORKER_CONCURRENCY": "4", "MODEL_N_THREADS": "2"},
}


@contextlib.contextmanager
def batch_invariant_kernels() -> Iterator[None]:
    """Load the reference with the CPU kernels the batched engine uses (no
    repacked weights, see batched.py): the comparison is then of what the two
    engines compute, not of two ggml kernels' rounding. The high-level API
    has no parameter for it, so its defaults are patched while it loads."""
    original = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        p = original()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original


def _engine_stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    if not redis_server.ping():
        redis_server.start()
    engine = request.param
    logs = tmp_path_factory.mktemp(f"stack-{engine}")
    name = f"{request.module.__name__.rsplit('.', 1)[-1]}-{engine}"
    worker = Worker(redis_server.url, logs / "worker.log", name, **ENGINES[engine])
    gateway = Gateway(redis_server.url, logs / "gateway.log")
    try:
        worker.start(wait_registered=True, redis=redis_server)
        gateway.start()
        yield gateway
    finally:
        gateway.stop(timeout=10)
        worker.stop(timeout=20)
    errors = [ln for ln in (gateway.output() + worker.output()).splitlines() if "ERROR" in ln]
    assert not errors, errors[:5]


def stack_fixture() -> object:
    """A module-scoped `engine_stack` fixture for the calling module."""
    return pytest.fixture(scope="module", params=list(ENGINES), name="engine_stack")(_engine_stack)


def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
