"""Settings both sides share (Redis, the queue's timings), and `from_env`,
which builds any settings struct from environment variables.

Each field's env var is its name in upper case (REDIS_URL,
JOB_LEASE_SECONDS, ...). Values are validated once at start; a bad value
stops the process with a message naming the variable.
"""

from __future__ import annotations

import os
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
    # "true"/"false" forces Redis Cluster on or off; empty: ask REDIS_URL's
    # node (INFO cluster) at start (streamworker/protocol/connections.py).
    redis_cluster: Literal["", "true", "false"] = ""
    # > 0: an accepted job (gateway) and a finished result (worker) are
    # confirmed with WAIT on this many replicas before anyone is told.
    redis_wait_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    redis_wait_timeout_ms: PositiveInt = 1000


class QueueSettings(msgspec.Struct, kw_only=True):
    """The job protocol's timings; gateway and workers must agree on them."""

    # A worker refreshes its running jobs' idle time every lease/3; an entry
    # idle longer than this belongs to a dead worker and is reclaimed.
    job_lease_seconds: PositiveFloat = 30.0
    job_max_attempts: PositiveInt = 3
    # Deadline for a job to start and finish, from when it is accepted.
    job_timeout_seconds: PositiveFloat = 600.0
    job_result_ttl_seconds: PositiveInt = 3600
    # Aging: a job that has waited this long competes as one tier higher (twice
    # as long: two tiers), so flex work completes under constant load. 0: strict tiers.
    scheduler_aging_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
