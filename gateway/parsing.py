"""A request body -> the job it asks for, or a 400 that names the bad param.

Pure: no I/O, so every rule here is unit-tested without a server. Each field
of the request structs (gateway/openai_types.py) is either honoured (it
shapes the job or the response) or refused with a 400 naming it; a value
that changes nothing (the `text` response format, `user`) is accepted.
Nothing is written to Redis for a refused request.

Chat messages are read in gateway/messages.py, tools in gateway/tools.py,
`response_format` in gateway/structured.py; both turn into a grammar in
the job's params when the answer must have a shape (compiling one loads
llama.cpp's library at first use; still no I/O per request).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from gateway import structured, tools
from gateway.errors import BadRequest
from gateway.messages import messages as parse_messages
from gateway.openai_types import ChatCompletionRequest, CompletionRequest
from streamworker.protocol.outcomes import Tier
from streamworker.protocol.wire import GenerationParams, JobKind, JobRequest, Message

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings
    from gateway.tools import ToolPlan

T = TypeVar("T")

# Params whose nested fields are reported as the param itself: clients (and
# OpenAI) name `response_format` or `logit_bias` for anything wrong inside.
WHOLE_PARAMS = ("response_format", "logit_bias")


@dataclass(frozen=True, slots=True)
class Caller:
    """What the job needs to know of the HTTP request besides its body."""

    request_id: str = ""
    owner: str = ""  # the API key's name; "" without a key
    idempotency_key: str | None = None
    # Retrieved sources (retrieval-augmented chat, gateway/rag.py): put first
    # as a system message.
    context: str = ""
    # The key's scheduling (keys file): the service tiers it may ask for, the
    # one `auto` (or no service_tier) means, and its fair-share weight.
    tiers: tuple[str, ...] = tuple(Tier)
    default_tier: str = Tier.DEFAULT.value
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be enqueued: what the worker runs (`request`), whose it
    is, and what the response needs to know."""

    model: str
    request: JobRequest
    owner: str
    idempotency_key: str | None
    stream: bool
    include_usage: bool
    timeout: float | None
    # A legacy batch (`prompt` as a list): the other prompts, each its own
    # job. Choices are numbered in order: n for `request`, then n for each.
    batch: tuple[JobRequest, ...] = ()
    # The request's tools, when the answer may call them.
    tools: ToolPlan | None = None
    # The service tier it is queued in (and the response echoes), and the
    # owner's fair-share weight within that tier.
    tier: str = Tier.DEFAULT.value
    weight: float = 1.0

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def requests(self) -> tuple[JobRequest, ...]:
        return (self.request, *self.batch)


class Parser(Protocol):
    """One endpoint's body format: parse_chat or parse_completion."""

    def __call__(self, body: bytes, settings: GatewaySettings, caller: Caller) -> NewJob: ...


def _param_of(exc: msgspec.ValidationError) -> str | None:
    text = str(exc)
    if "`$." not in text:
        return None
    param = text.rsplit("`$.", 1)[1].rstrip("`")
    for whole in WHOLE_PARAMS:
        if param.startswith((whole + ".", whole + "[")):
            return whole
    return param


def decode_body(body: bytes, cls: type[T]) -> T:
    if not body.strip():
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request: {exc}", param=_param_of(exc)) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None


def _refuse(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="unsupported_parameter")


def _n(value: int | None, settings: GatewaySettings) -> int:
    if value is None:
        return 1
    if value > settings.max_n:
        raise BadRequest(f"n must be at most {settings.max_n}.", param="n")
    return value


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if token < 0 or str(token) != key.strip():
            raise BadRequest(
                f"logit_bias keys are token ids; '{key[:20]}' is not one.", param="logit_bias"
            )
        if not -100 <= value <= 100:
            raise BadRequest("logit_bias values must be between -100 and 100.", param="logit_bias")
        out[token] = float(value)
    return out


def _stops(stop: str | list[str] | None, settings: GatewaySettings) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > settings.max_stop_sequences:
        raise BadRequest(
            f"At most {settings.max_stop_sequences} stop sequences are allowed.", param="stop"
        )
    return tuple(s for s in stops if s)


def _max_tokens(value: int | None, settings: GatewaySettings, param: str) -> int:
    if value is None:
        return settings.default_max_tokens
    if value > settings.max_tokens_limit:
        raise BadRequest(f"{param} must be at most {settings.max_tokens_limit}.", param=param)
    return value


def _params(
    req: ChatCompletionRequest | CompletionRequest,
    settings: GatewaySettings,
    max_tokens: int,
    **shape: Any,
) -> GenerationParams:
    """The sampling both endpoints share, plus the endpoint's own `shape`
    (grammar, logprobs, echo)."""
    if req.stream_options is not None and not req.stream:
        raise BadRequest(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )
    if req.timeout is not None and req.timeout > settings.max_timeout_seconds:
        raise BadRequest(
            f"timeout must be at most {settings.max_timeout_seconds} seconds.", param="timeout"
        )
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=_stops(req.stop, settings),
        # Pin a seed even when the client sent none, so a rerun after a crash
        # samples the same way where the engine allows.
        seed=req.seed if req.seed is not None else random.randrange(1 << 31),
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=_logit_bias(req.logit_bias),
        n=_n(req.n, settings),
        **shape,
    )


def service_tier(value: str | None, caller: Caller) -> str:
    """OpenAI's `service_tier` -> the tier the job is queued in: `auto` (or
    none) is the key's default tier; a tier the key may not use is a 400."""
    if value is None or value == "auto":
        return caller.default_tier
    if value not in Tier.__members__.values():
        names = ", ".join(["auto", *Tier])
        raise BadRequest(f"service_tier must be one of {names}.", param="service_tier")
    if value not in caller.tiers:
        raise BadRequest(
            f"This API key may not use service_tier '{value}'; it may use: "
            + ", ".join(caller.tiers)
            + ".",
            param="service_tier",
            code="service_tier_not_allowed",
        )
    return value


def _new_job(
    req: ChatCompletionRequest | CompletionRequest,
    requests: list[JobRequest],
    caller: Caller,
    plan: ToolPlan | None = None,
) -> NewJob:
    return NewJob(
        model=req.model,
        request=requests[0],
        owner=caller.owner,
        idempotency_key=caller.idempotency_key,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        timeout=req.timeout,
        batch=tuple(requests[1:]),
        tools=plan,
        tier=service_tier(req.service_tier, caller),
        weight=caller.weight,
    )


# -- chat -------------------------------------------------------------------------------


def _chat_shape(req: ChatCompletionRequest, plan: ToolPlan | None) -> dict[str, Any]:
    if req.functions:
        raise _refuse("functions", "functions is deprecated and not supported; send tools.")
    if req.function_call not in (None, "none"):
        raise _refuse("function_call", "function_call is not supported; send tool_choice.")
    if req.top_logprobs and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
    grammar = structured.grammar(req.response_format)
    if plan is not None:
        if grammar and not plan.constrained:
            raise _refuse(
                "response_format",
                "response_format with tools is only supported with tool_choice "
                "'required' or a named function; send one or the other.",
            )
        grammar = tools.grammar(plan) or grammar
    return {
        "grammar": grammar,
        "logprobs": bool(req.logprobs),
        "top_logprobs": req.top_logprobs or 0,
    }


def parse_chat(body: bytes, settings: GatewaySettings, caller: Caller) -> NewJob:
    """A /v1/chat/completions (or /v1/jobs) body -> its job, or BadRequest."""
    req = decode_body(body, ChatCompletionRequest)
    plan = tools.plan(req.tools, req.tool_choice, req.parallel_tool_calls)
    messages = parse_messages(req.messages, settings)
    if caller.context:
        messages = [Message("system", caller.context), *messages]
    if plan is not None:
        # The tools are described first, in the generic format (gateway/tools.py).
        messages = [Message("system", tools.instructions(plan)), *messages]
    # max_completion_tokens is the newer name; it wins when both are sent.
    if req.max_completion_tokens is not None:
        max_tokens = _max_tokens(req.max_completion_tokens, settings, "max_completion_tokens")
    else:
        max_tokens = _max_tokens(req.max_tokens, settings, "max_tokens")
    params = _params(req, settings, max_tokens, **_chat_shape(req, plan))
    request = JobRequest(
        kind=JobKind.CHAT, messages=messages, params=params, request_id=caller.request_id
    )
    return _new_job(req, [request], caller, plan)


# -- legacy completions -------------------------------------------------------------------


def _token_ids(value: list[Any], param: str) -> list[int]:
    if not value:
        raise BadRequest("A token-id prompt must not be empty.", param=param)
    for i, t in enumerate(value):
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise BadRequest("Token ids are non-negative integers.", param=f"{param}[{i}]")
    return value


def _prompts(prompt: str | list[Any], settings: GatewaySettings) -> list[str | list[int]]:
    """`prompt` in any of its four shapes -> one raw prompt per job."""
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif not prompt:
        raise BadRequest("prompt must not be an empty list.", param="prompt")
    elif all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [_token_ids(prompt, "prompt")]
    else:
        prompts = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                prompts.append(p)
            elif isinstance(p, list):
                prompts.append(_token_ids(p, f"prompt[{i}]"))
            else:
                raise BadRequest(
                    "prompt is a string, a list of strings, a list of token ids or a "
                    "list of token-id lists.",
                    param=f"prompt[{i}]",
                )
    if len(prompts) > settings.max_batch_prompts:
        raise BadRequest(
            f"At most {settings.max_batch_prompts} prompts per request.", param="prompt"
        )
    for i, p in enumerate(prompts):
        if len(p) > settings.max_message_chars:
            raise BadRequest(
                "The prompt is too long.", param="prompt" if i == 0 else f"prompt[{i}]"
            )
    return prompts


def parse_completion(body: bytes, settings: GatewaySettings, caller: Caller) -> NewJob:
    """A legacy /v1/completions body -> its job (the raw prompt, no chat
    template; a batch of prompts is a job each), or BadRequest."""
    req = decode_body(body, CompletionRequest)
    if req.best_of not in (None, 1):
        raise _refuse("best_of", "best_of is not supported; send 1 or leave it out.")
    if req.suffix:
        raise _refuse("suffix", "suffix (insertion) is not supported; leave it out.")
    prompts = _prompts(req.prompt, settings)
    max_tokens = _max_tokens(req.max_tokens, settings, "max_tokens")
    shape = {
        "logprobs": req.logprobs is not None,
        "top_logprobs": req.logprobs or 0,
        "echo": bool(req.echo),
    }
    params = _params(req, settings, max_tokens, **shape)
    requests = [
        JobRequest(kind=JobKind.COMPLETION, prompt=p, params=params, request_id=caller.request_id)
        for p in prompts
    ]
    return _new_job(req, requests, caller)
