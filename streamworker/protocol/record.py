"""The job record: a Redis hash per job (keys.ModelKeys.job), decoded."""

from __future__ import annotations

import time
import uuid

import msgspec

from streamworker.protocol.outcomes import STATUS_CODES, JobStatus
from streamworker.protocol.wire import End, JobKind


class ChoiceResult(msgspec.Struct, frozen=True):
    """One choice of a job with n > 1, as the record's `choices` holds it."""

    index: int
    text: str
    finish_reason: str | None = None


_choices_decoder = msgspec.json.Decoder(list[ChoiceResult])


def choices_field(texts: list[str], finish_reasons: list[str] | None) -> str:
    """The record's `choices` field (JSON): every choice's text and finish
    reason, by index. Written only for n > 1; `text` and `finish_reason`
    are choice 0's either way."""
    reasons = finish_reasons or []
    return msgspec.json.encode(
        [
            ChoiceResult(i, text, reasons[i] if i < len(reasons) and reasons[i] else None)
            for i, text in enumerate(texts)
        ]
    ).decode()


class JobRecord(msgspec.Struct, kw_only=True):
    """The job's hash, decoded. Times are Unix milliseconds."""

    id: str
    status: JobStatus
    model: str
    created_at: int
    deadline: int
    kind: JobKind = JobKind.CHAT
    # The API key's name that created the job ("" when keys are not in use):
    # only that key may read, stream or cancel it.
    owner: str = ""
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
    # n > 1: every choice's text and finish reason (the `choices` field).
    choices: list[ChoiceResult] = []

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
        fields: dict[str, object] = {k.decode(): v.decode() for k, v in raw.items()}
        keep = {k: v for k, v in fields.items() if k in cls.__struct_fields__}
        keep["id"] = job_id
        if isinstance(choices := keep.get("choices"), str):
            keep["choices"] = _choices_decoder.decode(choices) if choices else []
        return msgspec.convert(keep, cls, strict=False)

    def visible_to(self, owner: str) -> bool:
        """A job made under an API key belongs to that key alone."""
        return not self.owner or self.owner == owner

    def end(self) -> End | None:
        """The End event a terminal record stands for (None while it runs)."""
        if not self.status.terminal:
            return None
        code = self.error_code or STATUS_CODES.get(self.status)
        return End(
            status=self.status.value,
            finish_reason=self.finish_reason or None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            code=str(code) if code else None,
            message=self.error,
            finish_reasons=[c.finish_reason or "" for c in self.choices] or None,
        )


def new_job_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now_ms() -> int:
    return int(time.time() * 1000)
