"""Files and batches in Redis: the key layout and the small reads and writes
the files API, the batches API and the batch runner share.

Everything of one file or one batch carries its id as a Redis Cluster hash
tag, so the steps that must be atomic (MULTI) stay within one slot. File
bytes live in Redis, next to the jobs they become: a batch then survives
whatever its jobs survive (AOF, replicas), with no disk of one gateway to
lose. That is why files are capped (BATCH_MAX_FILE_BYTES): Redis holds
them in memory and in its AOF.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from streamworker.protocol.keys import PREFIX
from streamworker.protocol.scripts import source

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

# Batches not yet terminal (a sorted set, id -> created_at): what runners advance.
ACTIVE = f"{PREFIX}:batches:active"


def file_key(file_id: str) -> str:
    """A file's metadata (a hash)."""
    return f"{PREFIX}:file:{{{file_id}}}"


def file_data(file_id: str) -> str:
    """A file's bytes (a string)."""
    return f"{PREFIX}:file:{{{file_id}}}:data"


def files_of(owner: str) -> str:
    """An owner's file ids by creation time (a sorted set)."""
    return f"{PREFIX}:files:owner:{owner}"


def batches_of(owner: str) -> str:
    """An owner's batch ids by creation time (a sorted set)."""
    return f"{PREFIX}:batches:owner:{owner}"


class BatchKeys:
    """The keys of one batch, all under the batch id's hash tag."""

    __slots__ = ("base", "err", "lease", "lines", "ok", "pending")

    def __init__(self, batch_id: str) -> None:
        self.base = f"{PREFIX}:batch:{{{batch_id}}}"
        # The input's lines by index (a hash), written once at validation.
        self.lines = self.base + ":lines"
        # Line indices enqueued whose result is not yet collected (a set).
        self.pending = self.base + ":pending"
        # Collected result lines by index: answered 200 (ok) or not (err).
        self.ok = self.base + ":ok"
        self.err = self.base + ":err"
        # The runner lease: which gateway advances the batch now (a string, PX).
        self.lease = self.base + ":lease"


def now_s() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


# -- files ------------------------------------------------------------------------------


def file_object(meta: dict[str, str]) -> dict[str, Any]:
    expires = meta.get("expires_at")
    return {
        "id": meta["id"],
        "object": "file",
        "bytes": int(meta["bytes"]),
        "created_at": int(meta["created_at"]),
        "expires_at": int(expires) if expires else None,
        "filename": meta.get("filename", ""),
        "purpose": meta["purpose"],
        "status": "processed",
        "status_details": None,
    }


async def put_file(
    redis: Redis,
    *,
    file_id: str,
    owner: str,
    purpose: str,
    filename: str,
    data: bytes,
    ttl_seconds: int,
) -> dict[str, str]:
    """Store a file (metadata and bytes, one MULTI); a second call with the
    same id writes the same thing (finalizing may run twice)."""
    now = now_s()
    meta = {
        "id": file_id,
        "owner": owner,
        "purpose": purpose,
        "filename": filename,
        "bytes": str(len(data)),
        "created_at": str(now),
        "expires_at": str(now + ttl_seconds),
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(file_key(file_id), mapping=meta)
        pipe.expire(file_key(file_id), ttl_seconds)
        pipe.set(file_data(file_id), data, ex=ttl_seconds)
        await pipe.execute()
    await redis.zadd(files_of(owner), {file_id: now})
    return meta


async def get_file(redis: Redis, file_id: str, owner: str) -> dict[str, str] | None:
    """A file's metadata, if it exists and belongs to `owner`."""
    raw = await redis.hgetall(file_key(file_id))
    meta = _text(raw) if raw else None
    if meta is None or meta.get("owner", "") != owner:
        return None
    return meta


async def file_bytes(redis: Redis, file_id: str) -> bytes | None:
    return await redis.get(file_data(file_id))


async def delete_file(redis: Redis, file_id: str, owner: str) -> None:
    await redis.delete(file_key(file_id), file_data(file_id))
    await redis.zrem(files_of(owner), file_id)


async def list_ids(
    redis: Redis, index: str, *, after: str | None, limit: int, newest_first: bool
) -> list[str]:
    """Ids from an owner's index, in creation order, starting past `after`."""
    ids = [
        i.decode()
        for i in (
            await redis.zrevrange(index, 0, -1)
            if newest_first
            else await redis.zrange(index, 0, -1)
        )
    ]
    if after is not None:
        ids = ids[ids.index(after) + 1 :] if after in ids else []
    return ids[: limit + 1]


# -- batches ----------------------------------------------------------------------------


async def get_batch(redis: Redis, batch_id: str) -> dict[str, str] | None:
    raw = await redis.hgetall(BatchKeys(batch_id).base)
    return _text(raw) if raw else None


async def counts(redis: Redis, batch_id: str) -> tuple[int, int]:
    """(completed, failed) lines collected so far."""
    k = BatchKeys(batch_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hlen(k.ok)
        pipe.hlen(k.err)
        ok, err = await pipe.execute()
    return int(ok), int(err)


def _opt_int(meta: dict[str, str], name: str) -> int | None:
    value = meta.get(name)
    return int(value) if value else None


def batch_object(meta: dict[str, str], ok: int, err: int) -> dict[str, Any]:
    """OpenAI's Batch object. Terminal batches carry their final counts;
    running ones the lines collected so far."""
    if "count_completed" in meta:
        ok, err = int(meta["count_completed"]), int(meta["count_failed"])
    errors = json.loads(meta["errors"]) if meta.get("errors") else None
    return {
        "id": meta["id"],
        "object": "batch",
        "endpoint": meta["endpoint"],
        "errors": errors,
        "input_file_id": meta["input_file_id"],
        "completion_window": meta["completion_window"],
        "status": meta["status"],
        "output_file_id": meta.get("output_file_id") or None,
        "error_file_id": meta.get("error_file_id") or None,
        "created_at": int(meta["created_at"]),
        "in_progress_at": _opt_int(meta, "in_progress_at"),
        "expires_at": _opt_int(meta, "expires_at"),
        "finalizing_at": _opt_int(meta, "finalizing_at"),
        "completed_at": _opt_int(meta, "completed_at"),
        "failed_at": _opt_int(meta, "failed_at"),
        "expired_at": _opt_int(meta, "expired_at"),
        "cancelling_at": _opt_int(meta, "cancelling_at"),
        "cancelled_at": _opt_int(meta, "cancelled_at"),
        "request_counts": {"total": int(meta.get("total") or 0), "completed": ok, "failed": err},
        "metadata": json.loads(meta["metadata"]) if meta.get("metadata") else None,
    }


async def take_lease(redis: Redis, key: str, token: str, ms: int) -> bool:
    """Hold `key` for `ms` (or renew a lease this token already holds)."""
    if await redis.set(key, token, nx=True, px=ms):
        return True
    held = await redis.get(key)
    if held is not None and held.decode() == token:
        await redis.pexpire(key, ms)
        return True
    return False


async def drop_lease(redis: Redis, key: str, token: str) -> None:
    held = await redis.get(key)
    if held is not None and held.decode() == token:
        await redis.delete(key)


_scripts: dict[int, AsyncScript] = {}


async def set_status(
    redis: Redis, batch_id: str, expected: tuple[str, ...], fields: dict[str, str]
) -> bool:
    """Write `fields` (a new status among them) only while the batch's
    status is one of `expected`; False when it had changed meanwhile."""
    script = _scripts.get(id(redis))
    if script is None:
        script = _scripts[id(redis)] = redis.register_script(source("batch_status"))
    flat = [x for kv in fields.items() for x in kv]
    done = await script(keys=[BatchKeys(batch_id).base], args=[",".join(expected), *flat])
    return bool(done)
