"""streamworker/engines/base.py's TextAssembler: token bytes -> the text a
client may see. Whole UTF-8 characters only, never any part of a stop
string, nothing lost at the end, and the same text after a resume."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import pytest

from streamworker.engines.base import TextAssembler

pytestmark = pytest.mark.unit

# One character of each UTF-8 length beyond ASCII: 2, 3 and 4 bytes.
WIDE = ["é", "€", "😀"]


def splits(data: bytes) -> Iterator[list[bytes]]:
    """Every way to cut `data` into non-empty tokens."""
    for n in range(len(data)):
        for cuts in itertools.combinations(range(1, len(data)), n):
            bounds = [0, *cuts, len(data)]
            yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def run(stops: Sequence[str], tokens: Sequence[bytes]) -> tuple[list[str], str]:
    """The text released per token, and what flush() releases at the end."""
    assembler = TextAssembler(stops)
    return [assembler.feed(t) for t in tokens], assembler.flush()


@pytest.mark.parametrize("char", WIDE, ids=["2-byte", "3-byte", "4-byte"])
def test_characters_split_across_tokens(char: str) -> None:
    text = f"a{char}b{char}"
    for tokens in splits(text.encode()):
        pieces, tail = run([], tokens)
        assert "".join(pieces) + tail == text, tokens
        assert not any("\ufffd" in p for p in pieces), tokens
        assert tail == ""  # every character was whole by the last token


def test_a_character_is_released_with_its_last_byte() -> None:
    data = "😀".encode()
    pieces, _ = run([], [data[i : i + 1] for i in range(len(data))])
    assert pieces == ["", "", "", "😀"]


def test_an_unfinished_character_at_the_end_is_replaced_not_dropped() -> None:
    pieces, tail = run([], [b"ok", "€".encode()[:2]])
    assert pieces == ["ok", ""] and tail == "\ufffd"


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("say STOP now", ["STOP"], "say "),
        ("a€STOP€b", ["STOP€"], "a€"),
        ("one\n\nUser: two", ["\n\nUser:"], "one"),
        # The earliest stop wins, whatever the order they were given in.
        ("x END y HALT z", ["HALT", "END"], "x "),
        ("xab", ["b", "a"], "x"),
    ],
)
def test_stop_strings_straddling_tokens_never_appear(
    text: str, stops: list[str], expected: str
) -> None:
    for tokens in splits(text.encode()):
        pieces, tail = run(stops, tokens)
        assert "".join(pieces) + tail == expected, tokens
        assert tail == ""  # the stop ended it: nothing held back was text


def test_a_possible_stop_is_held_then_released() -> None:
    assembler = TextAssembler(["STOP"])
    assert assembler.feed(b"hello ST") == "hello "
    assert assembler.feed(b"O") == ""
    assert assembler.feed(b"NE") == "STONE"  # not a stop after all
    assert assembler.feed(b" S") == " "
    assert assembler.flush() == "S"  # the end: what was held is text
    assert not assembler.stopped


def test_nothing_after_a_stop() -> None:
    assembler = TextAssembler(["STOP"])
    assert assembler.feed(b"aSTOPb") == "a"
    assert assembler.stopped
    assert assembler.feed(b"more") == ""
    assert assembler.flush() == ""


RESUME_CASES = [
    # (stops, tokens): resumed after every token in turn.
    (["STOP"], [b"one S", b"T", b"O", b"NE two ", b"STO", b"P three"]),
    (["\n\nUser:"], [b"a\n", b"\n", b"Us", b"er", b": b"]),
    ([], [b"x", "😀".encode()[:1], "😀".encode()[1:3], "😀".encode()[3:] + b"y"]),
    (["€€"], [b"a", "€".encode()[:2], "€".encode()[2:], "€".encode(), b"b"]),
]


@pytest.mark.parametrize(("stops", "tokens"), RESUME_CASES)
def test_replay_after_a_resume_continues_the_text(stops: list[str], tokens: list[bytes]) -> None:
    pieces, tail = run(stops, tokens)
    whole = "".join(pieces) + tail
    for done in range(len(tokens) + 1):
        # The log holds the first `done` tokens and the text they released;
        # a new attempt rebuilds its state from them and goes on.
        sent = "".join(pieces[:done])
        resumed = TextAssembler(stops)
        resumed.replay(tokens[:done], sent)
        rest = "".join(resumed.feed(t) for t in tokens[done:]) + resumed.flush()
        assert sent + rest == whole, done


def test_replay_of_a_logged_tail_does_not_send_it_twice() -> None:
    # The last attempt flushed its held text into the log ("ST", token -1)
    # and died before it could finish the job.
    tokens = [b"a", b"ST"]
    pieces, tail = run(["STOP"], tokens)
    assert (pieces, tail) == (["a", ""], "ST")
    resumed = TextAssembler(["STOP"])
    resumed.replay(tokens, "a" + tail)
    assert resumed.flush() == ""
