"""The Lua scripts, one per atomic step, loaded once per Redis client."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

NAMES = (
    "enqueue",
    "start",
    "append",
    "finish",
    "requeue",
    "refresh",
    "cancel",
    "replay",
    "prune",
    "ratelimit",
)


def _source(name: str) -> str:
    lua = resources.files("streamworker") / "lua"
    return (lua / "_common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """Registered scripts: EVALSHA, reloaded by redis-py after a Redis restart."""

    def __init__(self, redis: Redis) -> None:
        self.enqueue: AsyncScript = redis.register_script(_source("enqueue"))
        self.start: AsyncScript = redis.register_script(_source("start"))
        self.append: AsyncScript = redis.register_script(_source("append"))
        self.finish: AsyncScript = redis.register_script(_source("finish"))
        self.requeue: AsyncScript = redis.register_script(_source("requeue"))
        self.refresh: AsyncScript = redis.register_script(_source("refresh"))
        self.cancel: AsyncScript = redis.register_script(_source("cancel"))
        self.replay: AsyncScript = redis.register_script(_source("replay"))
        self.prune: AsyncScript = redis.register_script(_source("prune"))
        # The gateway's per-API-key limits (gateway/ratelimit.py).
        self.ratelimit: AsyncScript = redis.register_script(_source("ratelimit"))
