"""The job: what a client asked for, its status, and its record in Redis."""

from __future__ import annotations

import enum
import time
import uuid

import msgspec

from streamworker.engines.base import GenerationParams, Message


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class JobRequest(msgspec.Struct, frozen=True):
    """The stream entry's `payload`: everything a worker needs to run the job."""

    messages: list[Message]
    params: GenerationParams
    # The gateway's X-Request-ID, so the worker's log lines for this job carry
    # it too (streamworker/logs.py). Not secret, not the prompt.
    request_id: str = ""


class JobRecord(msgspec.Struct, kw_only=True):
    """The job's hash, decoded. Times are Unix milliseconds."""

    id: str
    status: JobStatus
    model: str
    created_at: int
    deadline: int
    attempt: int = 0
    failures: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    worker: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    error_code: str | None = None
    last_error: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        keep = {k: v for k, v in fields.items() if k in cls.__struct_fields__}
        keep["id"] = job_id
        return msgspec.convert(keep, cls, strict=False)


def new_job_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now_ms() -> int:
    return int(time.time() * 1000)
