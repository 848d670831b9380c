"""The gateway's own settings (Redis and queue settings live in streamworker)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec

from streamworker.protocol.settings import PositiveFloat, PositiveInt

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class GatewaySettings(msgspec.Struct, kw_only=True):
    gateway_host: str = "127.0.0.1"
    gateway_port: Port = 8080
    # Processes serving the port: a number, or "auto" for one per core. More
    # than one runs under a supervisor (gateway/supervisor.py), each process
    # binding the port with SO_REUSEPORT.
    gateway_workers: Annotated[str, msgspec.Meta(pattern=r"^(auto|[1-9][0-9]*)$")] = "1"
    # SIGTERM: requests in flight (streams included) get this long to finish.
    gateway_shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0)] = 25.0
    environment: Literal["development", "production"] = "development"
    # Queued jobs per model before 429. 0: MAX_QUEUE_PER_SLOT x live capacity.
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_queue_per_slot: PositiveInt = 8
    # Seconds between SSE keep-alive comments while a job waits or runs.
    sse_keepalive_seconds: PositiveFloat = 5.0
    default_max_tokens: PositiveInt = 512
    max_tokens_limit: PositiveInt = 8192
    max_body_bytes: PositiveInt = 1 << 20
    max_messages: PositiveInt = 256
    max_message_chars: PositiveInt = 200_000
    max_stop_sequences: PositiveInt = 4
    # Choices one request may ask for (`n`); each is a sequence on a worker.
    max_n: PositiveInt = 8
    # Prompts in one legacy /v1/completions batch; each is its own job.
    max_batch_prompts: PositiveInt = 16
    max_timeout_seconds: PositiveFloat = 3600.0
    # -- security (gateway/auth.py, ratelimit.py, cors.py; docs/operations.md) --
    # Refuse requests without a valid Bearer key (OpenAI's own env name). Production
    # enforces keys whatever this says.
    openai_api_key_required: bool = False
    # One plaintext key (a single shared key); hashed at start, never logged.
    openai_api_key: str = ""
    # TOML file of many keys, stored as SHA-256 hashes with names and limits.
    api_keys_file: str = ""
    # Also require a key on /ready and /metrics (/health is always open).
    ops_endpoints_require_key: bool = False
    # Per-key defaults; 0 means unlimited. The keys file overrides per key.
    rate_limit_rpm: Annotated[int, msgspec.Meta(ge=0)] = 0
    rate_limit_tpm: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Comma-separated origins (or "*"); empty: no CORS headers at all.
    cors_allow_origins: str = ""
    # Log prompt text at DEBUG (never in production). Off: prompts never logged.
    log_prompts: bool = False
    # -- files, batches and webhooks (docs/batches.md) --
    # A file's bytes live in Redis (memory and AOF): hence the cap.
    batch_max_file_bytes: PositiveInt = 16 << 20
    batch_max_lines: PositiveInt = 50_000
    # Lines of one batch queued at once; the rest wait their turn, so a huge
    # batch never floods the queue or Redis with jobs.
    batch_max_in_flight: PositiveInt = 256
    # How often each gateway looks for batches and webhook messages to advance.
    batch_poll_seconds: PositiveFloat = 0.25
    # A gateway advancing a batch holds it this long at most: one killed
    # mid-step delays the batch by no more than this.
    batch_lease_seconds: PositiveFloat = 10.0
    # Also accept completion windows other than "24h" ("90s", "10m", "2h"):
    # an extension, for tests and short-lived work.
    batch_custom_windows: bool = False
    # Running jobs of a cancelled batch get this long to end before their lines
    # are written off as cancelled.
    batch_cancel_grace_seconds: PositiveFloat = 10.0
    # Files (inputs and outputs) and finished batches are kept this long.
    files_ttl_seconds: PositiveInt = 30 * 24 * 3600
    # Webhook retries: base * 2**attempt seconds apart (capped at an hour),
    # until a 2xx or until the message is this old.
    webhook_retry_base_seconds: PositiveFloat = 5.0
    webhook_max_age_seconds: PositiveInt = 3 * 24 * 3600
    webhook_timeout_seconds: PositiveFloat = 10.0

    def processes(self) -> int:
        """GATEWAY_WORKERS as a number of processes ("auto": the cores this
        process may run on)."""
        if self.gateway_workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.gateway_workers)

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug prints: mask the secret.
        shown = {f: getattr(self, f) for f in self.__struct_fields__}
        if shown["openai_api_key"]:
            shown["openai_api_key"] = "***"
        return "GatewaySettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
