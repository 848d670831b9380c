"""Token appends of every job a worker runs, sent together.

Each job logs and publishes its tokens through append.lua. With many jobs
at once, one round trip (and one event-loop wake-up) per job per token is
what a worker process spends its CPU on; the appender gathers the appends
that are waiting and sends them in one pipeline. Each job still has at most
one append in flight, so its tokens keep their order, and a job's later
tokens coalesce into its next append while a pipeline is in flight.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import NoScriptError, RedisError

from streamworker.protocol.connections import is_cluster

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

Call = tuple[list[str], list[object], "asyncio.Future[object]"]


class Appender:
    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self.redis = redis
        self.script = script
        self._waiting: list[Call] = []
        self._wake = anyio.Event()

    async def call(self, keys: list[str], args: list[object]) -> object:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, fut))
        self._wake.set()
        return await fut

    async def run(self) -> None:
        """Flush forever (a task of the worker's upkeep group)."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._waiting:
                    batch, self._waiting = self._waiting, []
                    await self._flush(batch)
        finally:
            for _, _, fut in self._waiting:
                if not fut.done():
                    fut.set_exception(RedisError("appender stopped"))

    async def _flush(self, batch: list[Call]) -> None:
        if len(batch) == 1:  # nothing to gain from a pipeline
            keys, args, fut = batch[0]
            await self._one(keys, args, fut)
            return
        if is_cluster(self.redis):
            # A cluster pipeline refuses EVALSHA (its jobs' slots may live on
            # different masters): send the batch's calls side by side instead,
            # still one wake-up for the whole batch.
            await asyncio.gather(*(self._one(keys, args, fut) for keys, args, fut in batch))
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.evalsha(self.script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            # The callers retry (their scripts are idempotent per sequence number).
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (keys, args, fut), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted: load it again
                await self._one(keys, args, fut)
            elif isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _one(self, keys: list[str], args: list[object], fut: asyncio.Future[object]) -> None:
        try:
            fut.set_result(await self.script(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            fut.set_exception(exc)
