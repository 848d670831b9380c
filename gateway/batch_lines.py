"""One line of a batch input file: read and checked into the job it asks
for, and, once that job ended, turned into its output line.

A line's body goes through the very parser its endpoint uses
(gateway/parsing.py, gateway/embeddings_api.py), and a finished job is
rendered by the endpoint's own renderer (gateway/render.py), so a line's
`response.body` is what the same request sent on its own would have
answered (`service_tier` says `flex`, where batch lines run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from gateway import render
from gateway.choices import ChoiceState, Collected
from gateway.embedding import embedding_job
from gateway.embeddings_api import EmbeddingRequest, embeddings_body, inputs_of
from gateway.errors import ApiError, BadRequest, JobFailed, end_error
from gateway.parsing import Caller, decode_body, parse_chat, parse_completion
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import JobStatus
from streamworker.protocol.wire import JobKind, decode_embedding

if TYPE_CHECKING:
    from gateway.parsing import NewJob
    from gateway.settings import GatewaySettings
    from gateway.state import GatewayState
    from streamworker.protocol.record import JobRecord

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
FLEX = "flex"


class LineError(Exception):
    """A line the batch cannot run: OpenAI's per-line validation error."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Line:
    custom_id: str
    body: bytes  # the request body, JSON
    # The body's model as written (read without parsing the whole body).
    model: str = ""


def read_line(raw: bytes, endpoint: str) -> Line:
    """The envelope of one line: custom_id, method, url, body."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LineError("invalid_json", "This line is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise LineError("invalid_request", "Each line must be a JSON object.")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_custom_id", "custom_id must be a non-empty string.", "custom_id")
    if obj.get("method") != "POST":
        raise LineError("invalid_method", "method must be POST.", "method")
    if obj.get("url") != endpoint:
        raise LineError(
            "mismatched_endpoint",
            f"url must be the batch's endpoint, '{endpoint}'.",
            "url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_request", "body must be a JSON object.", "body")
    model = body.get("model")
    return Line(custom_id, json.dumps(body).encode(), model if isinstance(model, str) else "")


def _caller(owner: str, weight: float) -> Caller:
    # A batch line runs in the flex tier whatever the key's default.
    return Caller(owner=owner, default_tier=FLEX, tiers=(FLEX,), weight=weight)


def job_of(
    line: Line,
    endpoint: str,
    settings: GatewaySettings,
    *,
    owner: str,
    weight: float,
    max_embedding_inputs: int,
) -> NewJob:
    """The job a line asks for; BadRequest as its endpoint would answer."""
    caller = _caller(owner, weight)
    if endpoint == "/v1/embeddings":
        req = decode_body(line.body, EmbeddingRequest)
        inputs = inputs_of(
            req.input, max_inputs=max_embedding_inputs, max_chars=settings.max_message_chars
        )
        if req.dimensions is not None and req.dimensions < 1:
            raise BadRequest("dimensions must be a positive integer.", param="dimensions")
        return embedding_job(
            req.model, inputs, owner=owner, request_id="", tier=FLEX, weight=weight
        )
    parse = parse_chat if endpoint == "/v1/chat/completions" else parse_completion
    job = parse(line.body, settings, caller)
    if job.stream:
        raise BadRequest("stream is not supported in a batch.", param="stream")
    if job.batch:
        raise BadRequest("A batch line may carry one prompt only.", param="prompt")
    return job


# -- results ----------------------------------------------------------------------------


def output_line(
    line_id: str, custom_id: str, job_id: str, status: int, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": job_id, "body": body},
        "error": None,
    }


def unrun_line(line_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A line that never got a response (the window passed, the batch was cancelled)."""
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


async def _chat_body(
    st: GatewayState, job: NewJob, record: JobRecord, endpoint: str
) -> dict[str, Any]:
    """A finished chat or text job's response body, read from its log."""
    entries = await st.jobs.log(job.model, record.id)
    n = job.request.params.n
    states = [ChoiceState(job.tools, streaming=False) for _ in range(n)]
    collected = [Collected(i) for i in range(n)]
    for e in entries:
        if e.choice < n:
            collected[e.choice].add(states[e.choice].feed([e]))
    end = record.end()
    reasons = (end.finish_reasons if end else None) or [record.finish_reason or ""]
    finished = []
    for i in range(n):
        collected[i].add(states[i].finish())
        reason = reasons[i] if i < len(reasons) else record.finish_reason
        finished.append(render.Finished(collected[i], states[i].finish_reason(reason or None)))
    chat = endpoint == "/v1/chat/completions"
    response_id = record.id if chat else "cmpl-" + record.id.split("-", 1)[-1]
    prompt = job.request.prompt
    factory = render.ChatRenderer if chat else render.TextRenderer
    out = factory(
        response_id,
        job.model,
        record.created_at // 1000,
        logprobs=job.request.params.logprobs,
        prompt_chars=0 if job.request.params.echo or not isinstance(prompt, str) else len(prompt),
        service_tier=FLEX,
    )
    usage = render.usage(record.prompt_tokens, record.completion_tokens)
    return json.loads(out.body(finished, usage))


async def _embedding_body(st: GatewayState, job_id: str, line: Line) -> dict[str, Any]:
    req = msgspec.json.decode(line.body, type=EmbeddingRequest)
    raw = await st.redis.hget(model_keys(req.model).job(job_id), "result")
    if raw is None:
        raise JobFailed("The embedding job ended without a result.")
    result = decode_embedding(raw)
    return embeddings_body(req, result)


async def response_of(
    st: GatewayState, job: NewJob, record: JobRecord, line: Line, endpoint: str
) -> tuple[int, dict[str, Any]]:
    """(status code, body) of a terminal job, as its endpoint would answer."""
    if record.status != JobStatus.COMPLETED:
        end = record.end()
        err: ApiError = end_error(end) if end is not None else BadRequest("The job did not end.")
        return err.status, err.body()
    try:
        if job.request.kind is JobKind.EMBEDDING:
            return 200, await _embedding_body(st, record.id, line)
        return 200, await _chat_body(st, job, record, endpoint)
    except ApiError as exc:
        return exc.status, exc.body()
