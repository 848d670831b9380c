"""Every sampling parameter in both engines, on the bundled base model:
JSON-schema grammars (the output always validates), logit bias, penalties,
top-k, logprobs, n choices, raw completion prompts with echo, and a resume
that replays a grammar or continues each choice after its own prefix."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence

import jsonschema
import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from streamworker.engines.base import Done, Engine, Piece, TooManyChoices
from streamworker.engines.batched import BatchedEngine
from streamworker.engines.llama import LlamaEngine
from streamworker.engines.sampling import BadGrammar
from streamworker.protocol.wire import GenerationParams, JobKind, JobRequest, Message

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        # No bounds: llama-cpp-python's schema converter does not apply them.
        "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 2},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
GRAMMAR = json_schema_to_gbnf(json.dumps(PERSON))
ASK = [Message("user", "Describe a person as JSON.")]


class Run:
    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.done: Done | None = None

    def of(self, choice: int) -> list[Piece]:
        return [p for p in self.pieces if p.choice == choice]

    def tokens(self, choice: int = 0) -> list[int]:
        return [p.token for p in self.of(choice) if p.token >= 0 and not p.echo]

    def text(self, choice: int = 0) -> str:
        return "".join(p.text for p in self.of(choice))


def run(
    engine: Engine,
    params: GenerationParams,
    messages: Sequence[Message] = ASK,
    resume: Sequence[Piece] = (),
    request: JobRequest | None = None,
) -> Run:
    request = request or JobRequest(messages=list(messages), params=params)

    async def main() -> Run:
        out = Run()
        async for item in engine.generate(request, resume, threading.Event()):
            if isinstance(item, Done):
                out.done = item
            else:
                out.pieces.append(item)
        return out

    return asyncio.run(main())


@pytest.fixture(scope="module", params=["llama", "batched"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    from streamworker.settings import EngineSettings

    settings = EngineSettings(slots=4, model_n_threads=2)
    built: Engine = LlamaEngine(settings) if request.param == "llama" else BatchedEngine(settings)
    yield built
    built.close()


def valid_person(text: str) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    return value


CONSTRAINED = GenerationParams(max_tokens=100, temperature=0, grammar=GRAMMAR)
SAMPLED = GenerationParams(max_tokens=100, temperature=1.0, seed=11, grammar=GRAMMAR, n=2)
_runs: dict[tuple[int, int], Run] = {}


def once(engine: Engine, params: GenerationParams) -> Run:
    """A run several tests read (one of the constants above): made once per
    engine."""
    key = (id(engine), id(params))
    if key not in _runs:
        _runs[key] = run(engine, params)
    return _runs[key]


def test_json_schema_output_always_validates(engine: Engine) -> None:
    greedy = once(engine, CONSTRAINED)
    valid_person(greedy.text())
    assert greedy.done is not None and greedy.done.finish_reason == "stop"
    sampled = once(engine, SAMPLED)
    assert sampled.done is not None and sampled.done.finish_reasons == ("stop", "stop")
    for choice in range(2):
        valid_person(sampled.text(choice))


def test_logit_bias_removes_and_forces_tokens(engine: Engine) -> None:
    plain = run(engine, GenerationParams(max_tokens=8, temperature=0))
    first = plain.tokens()[0]
    banned = run(engine, GenerationParams(max_tokens=8, temperature=0, logit_bias={first: -100}))
    assert first not in banned.tokens()
    forced_token = plain.tokens()[3]
    forced = run(
        engine, GenerationParams(max_tokens=4, temperature=0.8, logit_bias={forced_token: 100})
    )
    assert forced.tokens() == [forced_token] * 4


def test_penalties_reduce_repetition(engine: Engine) -> None:
    # The base model repeats the question line after line at temperature 0.
    plain = run(engine, GenerationParams(max_tokens=40, temperature=0))
    assert len(set(plain.tokens())) < len(plain.tokens()) / 2, plain.text()
    for params in (
        GenerationParams(max_tokens=40, temperature=0, frequency_penalty=1.5),
        GenerationParams(max_tokens=40, temperature=0, presence_penalty=1.5),
        GenerationParams(max_tokens=40, temperature=0, repeat_penalty=1.8),
    ):
        penalized = run(engine, params).tokens()
        assert len(set(penalized)) / len(penalized) > len(set(plain.tokens())) / len(
            plain.tokens()
        ), params


def test_top_k_1_is_greedy(engine: Engine) -> None:
    greedy = run(engine, GenerationParams(max_tokens=12, temperature=0))
    top1 = run(engine, GenerationParams(max_tokens=12, temperature=1.5, top_k=1, seed=3))
    assert top1.tokens() == greedy.tokens()


def test_min_p_and_top_p_keep_seeded_runs_reproducible(engine: Engine) -> None:
    params = GenerationParams(max_tokens=10, temperature=0.9, top_p=0.9, min_p=0.05, seed=21)
    assert run(engine, params).tokens() == run(engine, params).tokens()


def test_logprobs_shapes_and_values(engine: Engine) -> None:
    out = run(engine, GenerationParams(max_tokens=8, temperature=0, logprobs=True, top_logprobs=5))
    generated = [p for p in out.pieces if p.token >= 0]
    assert len(generated) == 8
    for p in generated:
        assert p.logprob is not None
        top = p.logprob.top
        assert len(top) == 5
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        # Greedy: the sampled token is the likeliest one.
        assert top[0].token == p.token
        assert top[0].logprob == pytest.approx(p.logprob.logprob)
        assert p.logprob.logprob <= 0
        assert p.logprob.piece.decode() == p.text or not p.text
        assert sum(2.718281828**t.logprob for t in top) <= 1.0 + 1e-6
    plain = run(engine, GenerationParams(max_tokens=8, temperature=0))
    assert plain.tokens() == out.tokens()  # asking for logprobs changes no token
    assert all(p.logprob is None for p in plain.pieces)


def test_n_choices_are_reproducible_per_seed(engine: Engine) -> None:
    params = GenerationParams(max_tokens=10, temperature=1.0, seed=7, n=3)
    a, b = run(engine, params), run(engine, params)
    for choice in range(3):
        assert a.tokens(choice) == b.tokens(choice)
        assert len(a.tokens(choice)) == 10
    assert a.done is not None and a.done.finish_reasons == ("length",) * 3
    # Choice i samples with seed + i: choice 1 here is choice 0 of seed 8.
    shifted = run(engine, GenerationParams(max_tokens=10, temperature=1.0, seed=8))
    assert shifted.tokens() == a.tokens(1)
    greedy = run(engine, GenerationParams(max_tokens=10, temperature=0, n=2))
    single = run(engine, GenerationParams(max_tokens=10, temperature=0))
    assert greedy.tokens(0) == greedy.tokens(1) == single.tokens()


def test_batched_n_choices_share_one_prefill() -> None:
    from streamworker.settings import EngineSettings

    engine = BatchedEngine(EngineSettings(slots=4, model_n_threads=2))
    try:
        before = engine.prefilled
        out = run(engine, GenerationParams(max_tokens=3, temperature=0.7, n=4))
        assert out.done is not None
        assert engine.prefilled - before == out.done.prompt_tokens  # once, not 4 times
        assert sorted(engine.decoder._free_ids) == [0, 1, 2, 3]
        with pytest.raises(TooManyChoices):
            run(engine, GenerationParams(max_tokens=3, n=5))
    finally:
        engine.close()


def test_raw_completion_prompt_and_echo(engine: Engine) -> None:
    text = "The capital of France is"
    params = GenerationParams(max_tokens=6, temperature=0)
    raw = run(
        engine, params, request=JobRequest(kind=JobKind.COMPLETION, prompt=text, params=params)
    )
    tokens = engine.prompts.raw_tokens(text)  # type: ignore[attr-defined]
    assert raw.done is not None and raw.done.prompt_tokens == len(tokens)  # no template
    by_ids = run(
        engine, params, request=JobRequest(kind=JobKind.COMPLETION, prompt=tokens, params=params)
    )
    assert by_ids.tokens() == raw.tokens()
    chat = run(engine, params, messages=[Message("user", text)])
    assert chat.done is not None and chat.done.prompt_tokens > len(tokens)
    echo = GenerationParams(max_tokens=6, temperature=0, echo=True, logprobs=True, top_logprobs=2)
    echoed = run(
        engine, echo, request=JobRequest(kind=JobKind.COMPLETION, prompt=text, params=echo)
    )
    prompt_part = [p for p in echoed.pieces if p.echo]
    assert "".join(p.text for p in prompt_part) == text
    assert prompt_part[0].logprob is None  # nothing precedes the first token
    assert all(p.logprob is not None and len(p.logprob.top) == 2 for p in prompt_part[1:])
    assert echoed.tokens() == raw.tokens()
    assert echoed.text() == text + raw.text()


def test_resume_replays_the_grammar_mid_object(engine: Engine) -> None:
    """Cut a constrained answer inside the object and resume from the cut:
    greedy continues exactly; sampled continues validly (the grammar knows
    where it is, so it does not start a new object or repeat a key)."""
    full = once(engine, CONSTRAINED)
    cut = len(full.pieces) // 2
    assert full.text().startswith("{") and "}" not in "".join(p.text for p in full.pieces[:cut])
    rest = run(engine, CONSTRAINED, resume=full.pieces[:cut])
    assert [*full.pieces[:cut], *rest.pieces] == full.pieces
    # Sampled: choice 1 cut in the middle, choice 0 done; the continuation
    # differs (another draw) but stays inside the same object.
    first = once(engine, SAMPLED)
    prefix = first.of(1)[: len(first.of(1)) // 2]
    rest = run(engine, SAMPLED, resume=[*first.of(0), *prefix])
    assert rest.of(0) == []
    valid_person("".join(p.text for p in [*prefix, *rest.of(1)]))


def test_resume_continues_each_choice_after_its_own_prefix(engine: Engine) -> None:
    params = GenerationParams(max_tokens=10, temperature=0, n=2)
    full = run(engine, params)
    # Choice 0 ended in the earlier attempt (its finish entry is logged);
    # choice 1 had delivered 4 tokens.
    logged = [*full.of(0), *full.of(1)[:4]]
    rest = run(engine, params, resume=logged)
    assert rest.of(0) == []  # a finished choice stays finished
    assert [*full.of(1)[:4], *rest.of(1)] == full.of(1)
    assert rest.done is not None and rest.done.finish_reasons == ("length", "length")


def test_bad_grammar_is_a_permanent_error(engine: Engine) -> None:
    with pytest.raises(BadGrammar):
        run(engine, GenerationParams(max_tokens=4, grammar="root ::= ("))
