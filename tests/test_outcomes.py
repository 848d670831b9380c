"""streamworker/protocol/outcomes.py: one vocabulary for Python and Lua. The
tables every script is given hold every status, reply and end code; the
scripts use only those tables, never a word of their own; a job record
decodes from its hash and ends with the code its status stands for."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import msgspec
import pytest

from streamworker.protocol.outcomes import (
    END_MESSAGES,
    STATUS_CODES,
    EndCode,
    JobStatus,
    Reply,
    StopReason,
    lua_vocabulary,
)
from streamworker.protocol.record import JobRecord
from streamworker.protocol.wire import End, JobKind

pytestmark = pytest.mark.unit

LUA_DIR = Path(str(resources.files("streamworker.protocol") / "lua"))
SCRIPTS = sorted(LUA_DIR.glob("*.lua"))
WORDS = {s.value for s in JobStatus} | {r.value for r in Reply} | {c.value for c in EndCode}

_TABLE = re.compile(r"^local (\w+) = \{(.*)\}$", re.MULTILINE)
_ENTRY = re.compile(r'(\w+) = "((?:[^"\\]|\\.)*)"')
_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_COMMENT = re.compile(r"--[^\n]*")


def vocabulary_tables() -> dict[str, dict[str, str]]:
    return {
        name: dict(_ENTRY.findall(body))
        for name, body in _TABLE.findall(lua_vocabulary())
        if name != "TERMINAL"
    }


def code_of(path: Path) -> str:
    """The script without comments; string literals kept where they were."""
    out, at, src = [], 0, path.read_text()
    for match in re.finditer(f"{_STRING.pattern}|{_COMMENT.pattern}", src):
        out.append(src[at : match.start()])
        token = match.group()
        out.append(" " * len(token) if token.startswith("--") else token)
        at = match.end()
    out.append(src[at:])
    return "".join(out)


def test_the_tables_hold_every_word() -> None:
    tables = vocabulary_tables()
    assert tables["S"] == {s.value: s.value for s in JobStatus}
    assert tables["R"] == {r.name.lower(): r.value for r in Reply}
    assert tables["CODE"] == {c.value: c.value for c in EndCode}
    assert set(tables["MESSAGE"]) == set(tables["CODE"])
    assert all(tables["MESSAGE"].values())
    terminal = re.search(r"^local TERMINAL = \{(.*)\}$", lua_vocabulary(), re.MULTILINE)
    assert terminal is not None
    assert set(re.findall(r"\[S\.(\w+)\] = true", terminal.group(1))) == {
        s.value for s in JobStatus if s.terminal
    }


def test_every_word_a_script_names_is_in_the_tables() -> None:
    # Lua reads a misspelled key as nil without a word: S.runing would
    # quietly never match.
    tables = vocabulary_tables()
    assert SCRIPTS, LUA_DIR
    for path in SCRIPTS:
        for table, key in re.findall(r"\b(S|R|CODE|MESSAGE)\.(\w+)", code_of(path)):
            assert key in tables[table], f"{path.name}: {table}.{key} is not in the vocabulary"


# Hash commands and which of their arguments (after the key) are field names.
_FIELDS = {
    "HGET": slice(0, None),
    "HMGET": slice(0, None),
    "HDEL": slice(0, None),
    "HEXISTS": slice(0, None),
    "HSET": slice(0, None, 2),
    "HSETNX": slice(0, 1),
    "HINCRBY": slice(0, 1),
}


def _call_args(code: str, open_paren: int) -> list[tuple[int, str]]:
    """The top-level arguments of the call whose '(' is at `open_paren`, with
    where each starts."""
    args, depth, start = [], 0, open_paren + 1
    i = open_paren + 1
    while True:
        if (string := _STRING.match(code, i)) is not None:
            i = string.end()
            continue
        ch = code[i]
        if ch in "({[":
            depth += 1
        elif ch in ")}]" and depth:
            depth -= 1
        elif ch in ",)" and not depth:
            text = code[start:i]
            args.append((start + len(text) - len(text.lstrip()), text.strip()))
            if ch == ")":
                return args
            start = i + 1
        i += 1


def field_name_positions(code: str) -> set[int]:
    """Where the script names a field of a hash: a record field may share its
    name with a word (the record's `cancel` flag and Reply.CANCEL)."""
    positions: set[int] = set()
    for call in re.finditer(r"redis\.call\(", code):
        args = _call_args(code, call.end() - 1)
        command = args[0][1].strip("'\"").upper()
        if command in _FIELDS:
            positions |= {at for at, _ in args[2:][_FIELDS[command]]}
    return positions


def spelled_words(code: str) -> list[str]:
    """'line: literal' for each word of the vocabulary the code spells out
    other than as a hash field's name."""
    fields = field_name_positions(code)
    spelled = []
    for literal in _STRING.finditer(code):
        if literal.group()[1:-1] in WORDS and literal.start() not in fields:
            line = code.count("\n", 0, literal.start()) + 1
            spelled.append(f"{line}: {literal.group()}")
    return spelled


def test_no_script_spells_a_word_of_its_own() -> None:
    spelled = [f"{p.name}:{w}" for p in SCRIPTS for w in spelled_words(code_of(p))]
    assert not spelled, "use the S/R/CODE tables instead: " + ", ".join(spelled)


def test_the_scan_sees_a_spelled_word() -> None:
    # The scan itself: a status as a value is caught, a field name is not.
    code = "redis.call('HSET', rec, 'cancel', '1', 'status', 'running')\nreturn 'stale'\n"
    assert spelled_words(code) == ["1: 'running'", "2: 'stale'"]


def test_stop_reasons_redis_can_know_are_replies() -> None:
    assert Reply.CANCEL.value == StopReason.CANCEL.value
    assert Reply.STALE.value == StopReason.STALE.value


def test_every_code_has_a_message_and_every_failure_a_code() -> None:
    assert set(END_MESSAGES) == set(EndCode)
    unhappy = {s for s in JobStatus if s.terminal and s is not JobStatus.COMPLETED}
    assert set(STATUS_CODES) == unhappy


def record(status: JobStatus, **fields: object) -> JobRecord:
    return JobRecord(id="chatcmpl-1", status=status, model="m", created_at=1, deadline=2, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (JobStatus.FAILED, "job_failed"),
        (JobStatus.CANCELLED, "cancelled"),
        (JobStatus.EXPIRED, "timeout"),
    ],
)
def test_a_record_ends_with_its_status_code(status: JobStatus, code: str) -> None:
    end = record(status, error="why").end()
    assert end == End(status=status.value, code=code, message="why")


def test_a_recorded_code_wins() -> None:
    end = record(JobStatus.FAILED, error_code="context_length_exceeded").end()
    assert end is not None and end.code == EndCode.CONTEXT_LENGTH_EXCEEDED


def test_a_completed_record_ends_with_its_result() -> None:
    done = record(
        JobStatus.COMPLETED, finish_reason="stop", prompt_tokens=3, completion_tokens=4
    ).end()
    assert done == End(
        status="completed", finish_reason="stop", prompt_tokens=3, completion_tokens=4
    )


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_a_live_record_has_no_end(status: JobStatus) -> None:
    assert record(status).end() is None


def as_hash(rec: JobRecord) -> dict[bytes, bytes]:
    """The record as the scripts store it: strings, absent when unset, plus
    fields only the scripts read."""
    raw = {
        name.encode(): str(value).encode()
        for name, value in msgspec.structs.asdict(rec).items()
        if value is not None and name != "id"
    }
    return raw | {b"request": b"{}", b"entry_id": b"1-0", b"cancel": b"1", b"heartbeat_at": b"9"}


@pytest.mark.parametrize(
    "rec",
    [
        record(JobStatus.QUEUED),
        record(JobStatus.RUNNING, owner="alice", attempt=2, failures=1, started_at=5, worker="w1"),
        record(
            JobStatus.COMPLETED,
            kind=JobKind.CHAT,
            owner="bob",
            attempt=1,
            started_at=5,
            finished_at=9,
            worker="w1",
            text="héllo 😀",
            finish_reason="length",
            prompt_tokens=3,
            completion_tokens=7,
        ),
        record(JobStatus.FAILED, error="boom", error_code="job_failed", last_error="engine"),
    ],
    ids=lambda r: r.status.value,
)
def test_a_record_round_trips_its_hash(rec: JobRecord) -> None:
    assert JobRecord.from_hash(rec.id, as_hash(rec)) == rec
