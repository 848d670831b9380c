"""Advancing batches: a background task in every gateway process.

Each tick, for each batch not yet terminal, the process that wins the
batch's short lease (BatchKeys.lease) takes it one step: validating ->
in_progress (or failed); enqueue lines up to BATCH_MAX_IN_FLIGHT; collect
the lines whose jobs ended; on expiry or cancel write off the rest; then
finalize. Every step is idempotent, so a process killed half-way leaves
work the next lease holder redoes without harm:

- line i's job id and Idempotency-Key are derived from (batch id, i): a
  second enqueue of the line finds the first job, never makes another;
- a collected line is written with HSETNX (first answer wins) and leaves
  `pending` in the same MULTI;
- finalizing rebuilds the same output files under the same ids from the
  collected lines, and only then marks the batch terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gateway import batch_store as store
from gateway import state, webhooks
from gateway.batch_lines import (
    Line,
    LineError,
    job_of,
    output_line,
    read_line,
    response_of,
    unrun_line,
)
from gateway.errors import ApiError, ModelNotFound
from gateway.retrieval.resources import retrieval_of
from streamworker.protocol.keys import model_keys
from streamworker.protocol.outcomes import JobStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web

    from gateway.parsing import NewJob
    from gateway.state import GatewayState

log = logging.getLogger("gateway.batches")

# Validation errors listed per batch (OpenAI lists them per line; a file of
# 50,000 bad lines needs no 50,000 entries to be understood).
MAX_LISTED_ERRORS = 1000
_UNRUN = {
    "expired": ("batch_expired", "This line was not executed before the completion window ended."),
    "cancelled": ("batch_cancelled", "This line was not executed: the batch was cancelled."),
}


def _hex(batch_id: str) -> str:
    return batch_id.removeprefix("batch_")


def job_id_of(batch_id: str, index: int) -> str:
    return f"chatcmpl-{_hex(batch_id)}-{index}"


def line_id_of(batch_id: str, index: int) -> str:
    return f"batch_req_{_hex(batch_id)}_{index}"


def output_file_id(batch_id: str, kind: str) -> str:
    return f"file-{_hex(batch_id)}{kind}"


class Runner:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.token = secrets.token_hex(8)

    @property
    def st(self) -> GatewayState:
        return state.of(self.app)

    def _job(self, meta: dict[str, str], line: Line) -> NewJob:
        return job_of(
            line,
            meta["endpoint"],
            self.st.settings,
            owner=meta.get("owner", ""),
            weight=float(meta.get("weight") or 1.0),
            max_embedding_inputs=retrieval_of(self.app).settings.max_embedding_inputs,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                log.warning("batch runner: redis unavailable (%s); retrying", type(exc).__name__)
            except Exception:  # one bad batch must not stop every other
                log.exception("batch runner tick failed")
            await asyncio.sleep(self.st.settings.batch_poll_seconds)

    async def tick(self) -> None:
        redis = self.st.redis
        for raw in await redis.zrange(store.ACTIVE, 0, -1):
            batch_id = raw.decode()
            k = store.BatchKeys(batch_id)
            lease_ms = int(self.st.settings.batch_lease_seconds * 1000)
            if not await store.take_lease(redis, k.lease, self.token, lease_ms):
                continue
            try:
                await self.advance(batch_id)
            except (RedisError, OSError):
                raise
            except Exception:  # one bad batch must not hold up the others
                log.exception("batch %s: step failed; retried next tick", batch_id)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await store.drop_lease(redis, k.lease, self.token)

    async def advance(self, batch_id: str) -> None:
        meta = await store.get_batch(self.st.redis, batch_id)
        if meta is None:
            await self.st.redis.zrem(store.ACTIVE, batch_id)
            return
        status = meta["status"]
        if status == "validating":
            await self.validate(meta)
        elif status == "in_progress":
            await self.progress(meta)
        elif status == "cancelling":
            await self.cancelling(meta)
        elif status == "finalizing":
            await self.finalize(meta, meta.get("final") or "completed")
        else:  # terminal, but a crash came before its end was told and tidied
            await self._ended(meta, status)

    # -- validating ---------------------------------------------------------------------

    async def validate(self, meta: dict[str, str]) -> None:
        st = self.st
        batch_id = meta["id"]
        data = await store.file_bytes(st.redis, meta["input_file_id"])
        errors: list[dict[str, Any]] = []
        lines: dict[int, bytes] = {}
        if data is None:
            errors.append({"code": "file_not_found", "message": "The input file no longer exists."})
        else:
            # (line number in the file, line): blank lines are skipped, not renumbered.
            raw_lines = [(n, ln) for n, ln in enumerate(data.splitlines(), start=1) if ln.strip()]
            if not raw_lines:
                errors.append({"code": "empty_file", "message": "The input file has no lines."})
            elif len(raw_lines) > st.settings.batch_max_lines:
                errors.append(
                    {
                        "code": "too_many_lines",
                        "message": f"A batch holds at most {st.settings.batch_max_lines} lines.",
                    }
                )
            else:
                errors = await self._check_lines(meta, raw_lines)
                lines = {i: ln for i, (_, ln) in enumerate(raw_lines)}
        k = store.BatchKeys(batch_id)
        now = store.now_s()
        if errors:
            failed = {
                "status": "failed",
                "failed_at": str(now),
                "total": "0",
                "count_completed": "0",
                "count_failed": "0",
                "errors": json.dumps({"object": "list", "data": errors[:MAX_LISTED_ERRORS]}),
            }
            if await store.set_status(st.redis, batch_id, ("validating",), failed):
                await self._ended(meta, "failed")
            return
        items = list(lines.items())
        for at in range(0, len(items), 1000):
            await st.redis.hset(k.lines, mapping=dict(items[at : at + 1000]))
        await store.set_status(
            st.redis,
            batch_id,
            ("validating",),
            {"status": "in_progress", "in_progress_at": str(now), "total": str(len(lines))},
        )

    async def _check_lines(
        self, meta: dict[str, str], raw_lines: list[tuple[int, bytes]]
    ) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: dict[str, bool] = {}
        limit = self.st.settings.max_body_bytes
        for i, (n, raw) in enumerate(raw_lines):
            if i % 200 == 199:
                # Parsing is CPU work: let the process's requests through now and then.
                await asyncio.sleep(0)
            try:
                if len(raw) > limit:
                    raise LineError("line_too_large", f"A line may be at most {limit} bytes.")
                line = read_line(raw, meta["endpoint"])
                if line.custom_id in seen:
                    raise LineError(
                        "duplicate_custom_id",
                        f"The custom_id '{line.custom_id}' is used by an earlier line.",
                        "custom_id",
                    )
                seen.add(line.custom_id)
                job = self._job(meta, line)
                if job.model not in models:
                    models[job.model] = await self._served(job.model)
                if not models[job.model]:
                    raise LineError(
                        "model_not_found", f"The model '{job.model}' does not exist.", "body.model"
                    )
            except LineError as exc:
                errors.append(
                    {"code": exc.code, "message": exc.message, "param": exc.param, "line": n}
                )
            except ApiError as exc:
                param = f"body.{exc.param}" if exc.param else "body"
                errors.append(
                    {
                        "code": exc.code or "invalid_request",
                        "message": exc.message,
                        "param": param,
                        "line": n,
                    }
                )
        return errors

    async def _served(self, model: str) -> bool:
        try:
            await self.st.models.require(model)
        except ModelNotFound:
            return False
        except ApiError:  # known, though no worker is alive right now: it may come back
            return True
        return True

    # -- in progress --------------------------------------------------------------------

    async def _lines(self, k: store.BatchKeys, indices: list[int]) -> list[Line | None]:
        raws = await self.st.redis.hmget(k.lines, [str(i) for i in indices]) if indices else []
        out: list[Line | None] = []
        for raw in raws:
            out.append(None if raw is None else _read(raw))
        return out

    async def _store(self, k: store.BatchKeys, index: int, line: dict[str, Any], ok: bool) -> None:
        async with self.st.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(k.ok if ok else k.err, str(index), json.dumps(line))
            pipe.srem(k.pending, str(index))
            await pipe.execute()

    async def _enqueue(self, meta: dict[str, str], index: int, job: NewJob) -> bool:
        """Enqueue line `index` (again); False when the line's job was made
        before and is gone (its record outlived)."""
        batch_id = meta["id"]
        remaining = max(1.0, int(meta["expires_at"]) - time.time())
        timeout = min(remaining, job.timeout) if job.timeout else remaining
        _, created = await self.st.jobs.enqueue(
            job.model,
            job_id_of(batch_id, index),
            job.request,
            owner=job.owner,
            timeout_seconds=timeout,
            max_queue=0,
            idempotency_key=f"batch:{batch_id}:{index}",
            tier="flex",
            weight=job.weight,
        )
        return created

    async def collect(self, meta: dict[str, str], ending: str | None = None) -> int:
        """Write the result of every pending line whose job ended; returns
        how many are still pending. With `ending`, a line whose job did not
        complete is written off as unrun (the batch expired or was cancelled)."""
        st = self.st
        batch_id = meta["id"]
        k = store.BatchKeys(batch_id)
        pending = sorted(int(i) for i in await st.redis.smembers(k.pending))
        lines = await self._lines(k, pending)
        # One pipelined status read for them all: most are still queued or
        # running, and need nothing more this tick.
        async with st.redis.pipeline(transaction=False) as pipe:
            for index, line in zip(pending, lines, strict=True):
                model = line.model if line is not None else ""
                pipe.hget(model_keys(model).job(job_id_of(batch_id, index)), "status")
            statuses = await pipe.execute()
        left = 0
        for index, line, raw_status in zip(pending, lines, statuses, strict=True):
            line_id = line_id_of(batch_id, index)
            if line is None:
                await st.redis.srem(k.pending, str(index))
                continue
            if (
                not ending
                and raw_status is not None
                and not JobStatus(raw_status.decode()).terminal
            ):
                left += 1
                continue
            job_id = job_id_of(batch_id, index)
            try:
                job = self._job(meta, line)
            except ApiError as exc:  # the parser changed its mind since validation
                await self._store(
                    k,
                    index,
                    output_line(line_id, line.custom_id, job_id, exc.status, exc.body()),
                    False,
                )
                continue
            record = await st.jobs.record(job.model, job_id)
            if record is None:
                if ending or not await self._enqueue(meta, index, job):
                    code, message = _UNRUN.get(
                        ending or "",
                        ("result_lost", "The line's result expired before it was collected."),
                    )
                    await self._store(
                        k, index, unrun_line(line_id, line.custom_id, code, message), False
                    )
                    continue
                left += 1
                continue
            if not record.status.terminal:
                if ending:
                    reason = JobStatus.EXPIRED if ending == "expired" else JobStatus.CANCELLED
                    await st.jobs.cancel(job.model, job_id, reason)
                left += 1
                continue
            if ending and record.status != JobStatus.COMPLETED:
                code, message = _UNRUN[ending]
                await self._store(
                    k, index, unrun_line(line_id, line.custom_id, code, message), False
                )
                continue
            status, body = await response_of(st, job, record, line, meta["endpoint"])
            await self._store(
                k, index, output_line(line_id, line.custom_id, job_id, status, body), status == 200
            )
        return left

    async def progress(self, meta: dict[str, str]) -> None:
        st = self.st
        batch_id = meta["id"]
        k = store.BatchKeys(batch_id)
        if time.time() >= int(meta["expires_at"]):
            await self.collect(meta, "expired")
            await self._write_off(meta, "expired")
            await self.finalize(meta, "expired")
            return
        left = await self.collect(meta)
        total = int(meta["total"])
        cursor = int(meta.get("enqueued") or 0)
        room = st.settings.batch_max_in_flight - left
        if room > 0 and cursor < total:
            upto = min(total, cursor + room)
            indices = list(range(cursor, upto))
            for index, line in zip(indices, await self._lines(k, indices), strict=True):
                # Pending first: a crash right after leaves a line the next
                # collect enqueues (again, idempotently), never one forgotten.
                await st.redis.sadd(k.pending, str(index))
                if line is not None:
                    try:
                        await self._enqueue(meta, index, self._job(meta, line))
                    except ApiError:
                        pass  # collect writes this line's error
                await st.redis.hset(k.base, "enqueued", str(index + 1))
            return
        if cursor >= total and left == 0:
            await self.finalize(meta, "completed")

    async def cancelling(self, meta: dict[str, str]) -> None:
        left = await self.collect(meta, "cancelled")
        since = int(meta.get("cancelling_at") or 0)
        if left and time.time() - since < self.st.settings.batch_cancel_grace_seconds:
            return
        await self._write_off(meta, "cancelled")
        await self.finalize(meta, "cancelled")

    async def _write_off(self, meta: dict[str, str], ending: str) -> None:
        """Every line without a result gets its unrun error line."""
        st = self.st
        batch_id = meta["id"]
        k = store.BatchKeys(batch_id)
        total = int(meta.get("total") or 0)
        async with st.redis.pipeline(transaction=False) as pipe:
            pipe.hkeys(k.ok)
            pipe.hkeys(k.err)
            ok, err = await pipe.execute()
        done = {int(i) for i in ok} | {int(i) for i in err}
        missing = [i for i in range(total) if i not in done]
        code, message = _UNRUN[ending]
        for at in range(0, len(missing), 1000):
            chunk = missing[at : at + 1000]
            for index, line in zip(chunk, await self._lines(k, chunk), strict=True):
                custom_id = line.custom_id if line is not None else ""
                await self._store(
                    k,
                    index,
                    unrun_line(line_id_of(batch_id, index), custom_id, code, message),
                    False,
                )

    # -- finalizing ---------------------------------------------------------------------

    async def finalize(self, meta: dict[str, str], final: str) -> None:
        st = self.st
        redis = st.redis
        batch_id = meta["id"]
        k = store.BatchKeys(batch_id)
        now = store.now_s()
        if meta["status"] != "finalizing":
            fields = {"status": "finalizing", "final": final}
            if not meta.get("finalizing_at"):
                fields["finalizing_at"] = str(now)
            # From the status this step read only: a cancel that came in
            # meanwhile is seen next tick.
            if not await store.set_status(redis, batch_id, (meta["status"],), fields):
                return
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.ok)
            pipe.hgetall(k.err)
            ok_raw, err_raw = await pipe.execute()
        ok = {int(i): v for i, v in ok_raw.items()}
        err = {int(i): v for i, v in err_raw.items() if int(i) not in ok}
        owner = meta.get("owner", "")
        ttl = st.settings.files_ttl_seconds
        ids: dict[str, str] = {}
        for kind, lines, field in (("out", ok, "output_file_id"), ("err", err, "error_file_id")):
            if not lines:
                continue
            file_id = output_file_id(batch_id, kind)
            data = b"".join(lines[i] + b"\n" for i in sorted(lines))
            await store.put_file(
                redis,
                file_id=file_id,
                owner=owner,
                purpose="batch_output",
                filename=f"{batch_id}_{'output' if kind == 'out' else 'error'}.jsonl",
                data=data,
                ttl_seconds=ttl,
            )
            ids[field] = file_id
        ended = {
            **ids,
            "status": final,
            f"{final}_at": str(now),
            "count_completed": str(len(ok)),
            "count_failed": str(len(err)),
        }
        if await store.set_status(redis, batch_id, ("finalizing",), ended):
            await self._ended(meta, final)

    async def _ended(self, meta: dict[str, str], final: str) -> None:
        """A batch reached a terminal status: tell its webhooks, keep the
        batch for FILES_TTL_SECONDS, drop its working keys."""
        st = self.st
        batch_id = meta["id"]
        k = store.BatchKeys(batch_id)
        await webhooks.emit(
            st, meta.get("owner", ""), f"batch.{final}", {"id": batch_id}, key=batch_id
        )
        await st.redis.expire(k.base, st.settings.files_ttl_seconds)
        await st.redis.delete(k.lines, k.pending, k.ok, k.err)
        await st.redis.zrem(store.ACTIVE, batch_id)
        log.info("batch %s %s", batch_id, final)


def _read(raw: bytes) -> Line | None:
    try:
        obj = json.loads(raw)
        model = obj["body"].get("model")
        return Line(
            obj["custom_id"],
            json.dumps(obj["body"]).encode(),
            model if isinstance(model, str) else "",
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def install(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the batch runner and the webhook sender, for this
    process's life (apart, so a slow webhook receiver never holds up batches)."""
    runner = Runner(app)
    tasks = [
        asyncio.create_task(runner.run(), name="batch-runner"),
        asyncio.create_task(webhooks.run(lambda: runner.st, runner.token), name="webhook-sender"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
