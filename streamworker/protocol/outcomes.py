"""How a job stands and how it ends: one vocabulary for Python and Lua.

Every word a job's state machine uses is defined here once. The Lua scripts
never spell them: `scripts.py` renders these enums into a table that is
prepended to every script (`S.running`, `R.stale`, `CODE.timeout`), so a
renamed status cannot drift between the worker, the gateway and Redis.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """The job record's `status`: queued -> running -> one terminal status."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class EndCode(enum.StrEnum):
    """`End.code`: why a job ended other than completed. The gateway maps
    each one to an HTTP error in one place (gateway/errors.py)."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    JOB_FAILED = "job_failed"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    # The record expired or was never there: nothing is known of the job.
    RECORD_GONE = "not_found"


# The words a client reads when a job ends without a result.
END_MESSAGES: dict[EndCode, str] = {
    EndCode.CANCELLED: "the job was cancelled",
    EndCode.TIMEOUT: "the job reached its deadline before it finished",
    EndCode.JOB_FAILED: "the job failed",
    EndCode.CONTEXT_LENGTH_EXCEEDED: "the prompt does not fit the model's context",
    EndCode.RECORD_GONE: "the job record is gone",
}

# A terminal status without a recorded code ends with this one.
STATUS_CODES: dict[JobStatus, EndCode] = {
    JobStatus.FAILED: EndCode.JOB_FAILED,
    JobStatus.EXPIRED: EndCode.TIMEOUT,
    JobStatus.CANCELLED: EndCode.CANCELLED,
}


class Tier(enum.StrEnum):
    """A job's service tier, highest first: a free slot takes the oldest
    job's tier once aging is counted, else the highest tier with jobs."""

    PRIORITY = "priority"
    DEFAULT = "default"
    FLEX = "flex"


class StopReason(enum.StrEnum):
    """Why a worker stopped a running job before the engine finished it."""

    CANCEL = "cancel"  # the client cancelled (append.lua saw the flag)
    STALE = "stale"  # the lease was lost: another attempt owns the job
    HANDBACK = "handback"  # the worker is shutting down
    EXPIRED = "expired"  # the job's deadline passed


class Reply(enum.StrEnum):
    """What the scripts answer (besides a job status)."""

    OK = "ok"
    # enqueue.lua
    FULL = "full"
    DUPLICATE = "duplicate"
    # start.lua: run it, or skip it (with a reason: a status, GONE or DEAD)
    RUN = "run"
    SKIP = "skip"
    GONE = "gone"
    DEAD = "dead"
    # append.lua: OK, or the two stop reasons Redis can know of
    CANCEL = StopReason.CANCEL.value
    STALE = StopReason.STALE.value
    # requeue.lua: REQUEUED, DEAD or STALE
    REQUEUED = "requeued"
    # cancel.lua: MISSING, CANCELLING (a running job, flagged), or a status
    MISSING = "missing"
    CANCELLING = "cancelling"


# A stopped job's final status, by why it stopped (HANDBACK and STALE write none).
STOP_STATUS: dict[StopReason | None, JobStatus] = {
    None: JobStatus.COMPLETED,
    StopReason.CANCEL: JobStatus.CANCELLED,
    StopReason.EXPIRED: JobStatus.EXPIRED,
}


def lua_vocabulary() -> str:
    """The Lua tables every script is given (see scripts.py)."""

    def table(name: str, values: dict[str, str]) -> str:
        body = ", ".join(f"{k} = {_lua_str(v)}" for k, v in values.items())
        return f"local {name} = {{{body}}}"

    return "\n".join(
        [
            table("S", {s.value: s.value for s in JobStatus}),
            table("R", {r.name.lower(): r.value for r in Reply}),
            table("CODE", {c.value: c.value for c in EndCode}),
            table("MESSAGE", {c.value: END_MESSAGES[c] for c in EndCode}),
            "local TIERS = {" + ", ".join(_lua_str(t.value) for t in Tier) + "}",
            "local TERMINAL = {"
            + ", ".join(f"[S.{s.value}] = true" for s in JobStatus if s.terminal)
            + "}",
        ]
    )


def _lua_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
