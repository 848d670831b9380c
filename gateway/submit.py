"""An admitted job's way into the queue, and its events' way back:
subscribe the job's channel, enqueue it, hand back a relay.

Subscribing first (confirmed by Redis) means no event of the job can be
missed, not even the first token of a worker that was idle and waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from gateway.errors import QueueFull, ServiceUnavailable
from gateway.relay import Relay
from streamworker.protocol import client as jobclient
from streamworker.protocol import keys, logs
from streamworker.protocol.connections import confirm
from streamworker.protocol.keys import model_keys
from streamworker.protocol.record import new_job_id

if TYPE_CHECKING:
    from gateway.parsing import NewJob
    from gateway.state import GatewayState


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The queue is unavailable; retry later.", headers={"Retry-After": "2"}
    )


def retry_after(depth: int, capacity: int) -> int:
    """Seconds a refused client should wait: about one queue's turn per slot."""
    return max(1, min(60, depth // max(capacity, 1)))


async def enqueue(st: GatewayState, job: NewJob, job_id: str) -> tuple[str, bool]:
    """Enqueue atomically within the queue's bound. Returns (job id, created):
    a retried Idempotency-Key of the same owner returns the first job's id
    and False."""
    # Every later log line of this request names the job.
    logs.job_id.set(job_id)
    capacity = await st.models.require(job.model)
    settings = st.settings
    max_queue = settings.max_queue or settings.max_queue_per_slot * capacity
    try:
        final_id, created = await st.jobs.enqueue(
            job.model,
            job_id,
            job.request,
            owner=job.owner,
            timeout_seconds=job.timeout,
            max_queue=max_queue,
            idempotency_key=job.idempotency_key,
            tier=job.tier,
            weight=job.weight,
        )
    except jobclient.QueueAtLimit as full:
        st.metrics.rejected.inc()
        raise QueueFull(
            f"The queue for model '{job.model}' is full ({full.depth} jobs waiting); retry later.",
            headers={"Retry-After": str(retry_after(full.depth, capacity))},
        ) from None
    except ResponseError as exc:
        if isinstance(exc, OutOfMemoryError) or "OOM" in str(exc):
            # maxmemory with noeviction: Redis refuses writes rather than
            # evicting jobs; tell the client plainly.
            raise ServiceUnavailable(
                "The queue is out of memory and cannot accept jobs; retry later.",
                code="queue_out_of_memory",
                headers={"Retry-After": "10"},
            ) from None
        raise _unavailable() from exc
    except (RedisError, OSError) as exc:
        raise _unavailable() from exc
    if st.wait_replicas > 0:
        await _replicated(st, job.model, final_id)
    logs.job_id.set(final_id)  # a retried Idempotency-Key: the first job
    return final_id, created


async def _replicated(st: GatewayState, model: str, job_id: str) -> None:
    """REDIS_WAIT_REPLICAS: answer 2xx only once that many replicas hold the
    job, so a failover right after cannot lose it. Short of that the client
    gets a 503; the job may still run, and a retry with the same
    Idempotency-Key finds it rather than making a second one."""
    try:
        # The job's master and the master holding its id -> model index.
        acked = await confirm(
            st.redis,
            [model_keys(model).job(job_id), keys.job_model(job_id)],
            st.wait_replicas,
            st.wait_timeout_ms,
        )
    except (RedisError, OSError) as exc:
        raise _unavailable() from exc
    if acked < st.wait_replicas:
        raise _unavailable()


@contextlib.asynccontextmanager
async def subscribed(
    st: GatewayState, model: str, job_id: str, *, confirm: bool = True
) -> AsyncIterator[Relay]:
    """A relay for a job, its channel subscribed for the block (with
    confirm=False, only asked for: see `submit`)."""
    try:
        cm = st.hub.subscribe(model_keys(model).channel(job_id), confirm=confirm)
        inbox = await cm.__aenter__()
    except (RedisError, OSError, TimeoutError) as exc:
        raise _unavailable() from exc
    try:
        yield Relay(st.jobs, model, job_id, inbox, keepalive=st.settings.sse_keepalive_seconds)
    finally:
        await cm.__aexit__(None, None, None)


async def _cancel_quietly(st: GatewayState, model: str, job_id: str) -> None:
    with contextlib.suppress(RedisError, OSError):
        await st.jobs.cancel(model, job_id)


@contextlib.asynccontextmanager
async def _cancelled_if_abandoned(st: GatewayState, relay: Relay) -> AsyncIterator[Relay]:
    try:
        yield relay
    except BaseException:
        # The client went away (or answering it failed): stop the job, shielded
        # from the cancellation that got us here. A job that already ended
        # is left as it is by the cancel script.
        await asyncio.shield(_cancel_quietly(st, relay.model, relay.job_id))
        raise


@contextlib.asynccontextmanager
async def submit(st: GatewayState, job: NewJob) -> AsyncIterator[Relay]:
    """Subscribe the job's channel, enqueue the job, and yield its relay
    (`relay.job_id` names the job). Leaving the block by an exception, a
    client's disconnect included, cancels the job."""
    job_id = new_job_id()
    # The subscription and the enqueue travel together: the relay starts by
    # reading the job's log, after the subscription is confirmed, so a token
    # published before it took effect is read from the log, not lost.
    async with subscribed(st, job.model, job_id, confirm=False) as relay:
        final_id, _created = await enqueue(st, job, job_id)
        await st.hub.confirmed(model_keys(job.model).channel(job_id))
        if final_id == job_id:
            async with _cancelled_if_abandoned(st, relay):
                yield relay
            return
    # A retried Idempotency-Key: relay the first job (its log replays what
    # was already sent, then live events).
    async with subscribed(st, job.model, final_id) as relay:
        relay.resume = True
        async with _cancelled_if_abandoned(st, relay):
            yield relay
