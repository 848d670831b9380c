"""Vectors through the queue: inputs -> a job of kind `embedding` -> the
worker's vectors, read from the job record once its `end` event arrives.

Used by POST /v1/embeddings and by retrieval (documents and queries): every
embedding is computed by a worker, under the GPU semaphore, behind the same
bounded queue (429 when full) as chat.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.errors import JobFailed, end_error
from gateway.parsing import NewJob
from gateway.relay import Idle
from gateway.submit import submit
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import JobStatus
from streamworker.protocol.wire import (
    EmbeddingResult,
    End,
    JobKind,
    JobRequest,
    decode_embedding,
)

if TYPE_CHECKING:
    from gateway.state import GatewayState


def embedding_job(
    model: str,
    inputs: list[str | list[int]],
    *,
    owner: str,
    request_id: str,
    timeout: float | None = None,
    tier: str = "default",
    weight: float = 1.0,
) -> NewJob:
    return NewJob(
        model=model,
        request=JobRequest(kind=JobKind.EMBEDDING, inputs=inputs, request_id=request_id),
        owner=owner,
        idempotency_key=None,
        stream=False,
        include_usage=False,
        timeout=timeout,
        tier=tier,
        weight=weight,
    )


async def embed(st: GatewayState, job: NewJob) -> EmbeddingResult:
    """Run an embedding job and return its vectors; raises the ApiError of a
    full queue (429), a missing model (404/503) or a failed job."""
    deadline = time.time() + (job.timeout or st.queue_settings.job_timeout_seconds) + 1
    async with submit(st, job) as relay:
        async for item in relay:
            if isinstance(item, Idle) and time.time() >= deadline:
                await relay.jobs.cancel(relay.model, relay.job_id, JobStatus.EXPIRED)
            elif isinstance(item, End):
                if item.status != JobStatus.COMPLETED:
                    raise end_error(item)
                raw = await st.redis.hget(model_keys(job.model).job(relay.job_id), "result")
                if raw is None:
                    break
                return decode_embedding(raw)
    raise JobFailed("The embedding job ended without a result.")
