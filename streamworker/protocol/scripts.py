"""Every Lua script, loaded one way: `Scripts(redis).<name>`.

Each script is one atomic step (lua/<name>.lua). The loader prepends the
job vocabulary (outcomes.lua_vocabulary: statuses, replies, end codes) and
the shared helpers (lua/_common.lua), so no script spells a status or a code
of its own. redis-py registers each once per client and runs it by EVALSHA,
loading it again after a Redis restart.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from streamworker.protocol.outcomes import lua_vocabulary

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


# The scripts that put a job into a wait stream or take it out also get
# the scheduling helpers (lua/_schedule.lua).
SCHEDULING = frozenset({"enqueue", "dispatch", "cancel", "replay", "queue_position"})


@cache
def source(name: str) -> str:
    lua = resources.files("streamworker.protocol") / "lua"
    parts = [lua_vocabulary(), (lua / "_common.lua").read_text()]
    if name in SCHEDULING:
        parts.append((lua / "_schedule.lua").read_text())
    return "\n".join([*parts, (lua / f"{name}.lua").read_text()])


class Scripts:
    """The registered scripts of one Redis client."""

    def __init__(self, redis: Redis) -> None:
        def load(name: str) -> AsyncScript:
            return redis.register_script(source(name))

        # A job's life (client side, then worker side).
        self.enqueue = load("enqueue")
        self.cancel = load("cancel")
        self.replay = load("replay")
        self.queue_position = load("queue_position")
        self.dispatch = load("dispatch")
        self.start = load("start")
        self.append = load("append")
        self.finish = load("finish")
        self.requeue = load("requeue")
        self.refresh = load("refresh")
        self.prune = load("prune")
        # Per-API-key rate limits (the gateway's admission).
        self.ratelimit = load("ratelimit")
        # The GPU semaphore shared by the worker processes on one GPU.
        self.semaphore_acquire = load("semaphore_acquire")
        self.semaphore_renew = load("semaphore_renew")
