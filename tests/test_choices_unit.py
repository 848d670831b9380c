"""Pure logic of n choices, echo and logprobs: the log entry's wire shape,
per-choice texts and counts, the record's `choices`, and the echo test
double's behaviour (which pipeline tests rely on)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import msgspec
import pytest

from streamworker.engines.base import Done, Piece
from streamworker.engines.echo import EchoEngine
from streamworker.job_run import GENERATED_KINDS, choice_texts, completion_tokens
from streamworker.protocol.record import JobRecord, choices_field
from streamworker.protocol.wire import (
    GenerationParams,
    JobKind,
    JobRequest,
    LogEntry,
    Message,
    TokenLogprob,
    TopLogprob,
    decode_log,
    encode,
)
from streamworker.settings import EngineSettings

pytestmark = pytest.mark.unit


def test_log_entry_wire_shape() -> None:
    assert encode(LogEntry(5, "x")) == b'[5,"x",0,null,false,""]'
    assert encode(LogEntry(-1, "", 1, finish="stop")) == b'[-1,"",1,null,false,"stop"]'
    lp = TokenLogprob(b"x", -0.5, [TopLogprob(5, b"x", -0.5)])
    entry = LogEntry(5, "x", 0, lp, echo=True)
    assert decode_log([encode(entry)]) == [entry]
    # An entry written before these fields existed still decodes.
    assert decode_log([b'[7,"y",2]']) == [LogEntry(7, "y", 2)]


def test_completion_counts_and_texts_per_choice() -> None:
    entries = [
        LogEntry(1, "The ", 0, echo=True),
        LogEntry(1, "The ", 1, echo=True),
        LogEntry(10, "a", 0),
        LogEntry(11, "b", 1),
        LogEntry(12, "c", 1),
        LogEntry(-1, "!", 0, finish="stop"),
        LogEntry(-1, "", 1, finish="length"),
    ]
    assert completion_tokens(entries) == 3  # echoed prompt tokens and tails are not
    assert choice_texts(entries, 2) == ["The a!", "The bc"]
    assert JobKind.COMPLETION in GENERATED_KINDS and JobKind.EMBEDDING not in GENERATED_KINDS


def test_record_choices_round_trip() -> None:
    raw = {
        b"status": b"completed",
        b"model": b"m",
        b"created_at": b"1",
        b"deadline": b"2",
        b"text": b"a",
        b"finish_reason": b"stop",
        b"choices": choices_field(["a", "b"], ["stop", "length"]).encode(),
    }
    record = JobRecord.from_hash("j", raw)
    assert [(c.index, c.text, c.finish_reason) for c in record.choices] == [
        (0, "a", "stop"),
        (1, "b", "length"),
    ]
    end = record.end()
    assert end is not None and end.finish_reasons == ["stop", "length"]
    single = JobRecord.from_hash("k", {k: v for k, v in raw.items() if k != b"choices"})
    assert single.choices == [] and single.end().finish_reasons is None  # type: ignore[union-attr]
    assert msgspec.json.decode(choices_field(["x"], None)) == [
        {"index": 0, "text": "x", "finish_reason": None}
    ]


def echo(request: JobRequest, resume: Sequence[Piece] = ()) -> tuple[list[Piece], Done]:
    engine = EchoEngine(EngineSettings(engine="echo", model_name="echo-test"))

    async def main() -> tuple[list[Piece], Done]:
        pieces, done = [], None
        async for item in engine.generate(request, resume, threading.Event()):
            if isinstance(item, Done):
                done = item
            else:
                pieces.append(item)
        assert done is not None
        return pieces, done

    return asyncio.run(main())


def test_echo_double_honours_n_echo_and_logprobs() -> None:
    params = GenerationParams(max_tokens=3, n=2, echo=True, logprobs=True, top_logprobs=2)
    pieces, done = echo(JobRequest(kind=JobKind.COMPLETION, prompt="a b", params=params))
    texts = choice_texts(pieces, 2)
    assert texts == ["a b a b a ", "a b b a b "]  # choice c starts at word c
    assert done.finish_reasons == ("length", "length") and done.prompt_tokens == 2
    prompt = [p for p in pieces if p.echo and p.choice == 0]
    assert prompt[0].logprob is None and prompt[1].logprob is not None
    generated = [p for p in pieces if not p.echo and p.token >= 0]
    assert all(p.logprob is not None and len(p.logprob.top) == 2 for p in generated)


def test_echo_double_resumes_each_choice() -> None:
    params = GenerationParams(max_tokens=4, n=2, stop=("z",))
    request = JobRequest(messages=[Message("user", "x y")], params=params)
    full, _ = echo(request)
    logged = [p for p in full if p.choice == 0] + [p for p in full if p.choice == 1][:2]
    rest, done = echo(request, logged)
    assert [p for p in rest if p.choice == 0] == []
    assert [p for p in rest if p.choice == 1] == [p for p in full if p.choice == 1][2:]
    assert choice_texts([*logged, *rest], 2) == choice_texts(full, 2)
    assert done.finish_reasons == ("length", "length")
