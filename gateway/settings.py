"""The gateway's own settings (Redis and queue settings live in streamworker)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from streamworker.settings import PositiveFloat, PositiveInt

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class GatewaySettings(msgspec.Struct, kw_only=True):
    gateway_host: str = "127.0.0.1"
    gateway_port: Port = 8080
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
    max_timeout_seconds: PositiveFloat = 3600.0
