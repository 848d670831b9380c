"""How a job that ended without a result reaches its client: every end code
and status -> one HTTP status and error code (gateway/errors.py end_error)."""

from __future__ import annotations

import pytest

from gateway.errors import end_code, end_error
from streamworker.protocol.outcomes import END_MESSAGES, EndCode, JobStatus
from streamworker.protocol.wire import End

pytestmark = pytest.mark.unit

# (status, code) as the scripts and the worker send them -> (HTTP status, error code, param)
CASES = [
    (JobStatus.CANCELLED, EndCode.CANCELLED, 409, "cancelled", None),
    (JobStatus.EXPIRED, EndCode.TIMEOUT, 504, "timeout", None),
    (JobStatus.FAILED, EndCode.JOB_FAILED, 500, "job_failed", None),
    (JobStatus.FAILED, EndCode.CONTEXT_LENGTH_EXCEEDED, 400, "context_length_exceeded", "messages"),
    (JobStatus.FAILED, EndCode.RECORD_GONE, 500, "job_failed", None),
]


@pytest.mark.parametrize(("status", "code", "http", "error_code", "param"), CASES)
def test_each_end_maps_to_one_error(
    status: JobStatus, code: EndCode, http: int, error_code: str, param: str | None
) -> None:
    err = end_error(End(status=status.value, code=code.value, message="why"))
    assert (err.status, err.code, err.param, err.message) == (http, error_code, param, "why")
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_every_end_code_is_mapped() -> None:
    mapped = {code for _, code, *_ in CASES}
    assert mapped == set(EndCode)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (JobStatus.CANCELLED, EndCode.CANCELLED),
        (JobStatus.EXPIRED, EndCode.TIMEOUT),
        (JobStatus.FAILED, EndCode.JOB_FAILED),
    ],
)
def test_a_status_without_a_code(status: JobStatus, expected: EndCode) -> None:
    end = End(status=status.value)
    assert end_code(end) is expected
    assert end_error(end).message == END_MESSAGES[expected]  # never an empty message


def test_the_status_decides_for_cancelled_and_expired_jobs() -> None:
    assert end_code(End(status="expired", code="job_failed")) is EndCode.TIMEOUT
    assert end_code(End(status="cancelled", code="timeout")) is EndCode.CANCELLED


def test_unknown_words_are_plain_failures() -> None:
    # A newer worker's code, or a status this gateway has never heard of.
    assert end_code(End(status="failed", code="gpu_on_fire")) is EndCode.JOB_FAILED
    assert end_code(End(status="vanished")) is EndCode.JOB_FAILED
    assert end_error(End(status="failed", code="gpu_on_fire")).status == 500
