"""Which worker this process is: a name no other live process uses, that the
same worker gets back when it restarts.

The name is the worker's consumer in every model's group (a restarted worker
reads its own pending entries back under it), its registry id and the owner
of its GPU semaphore tokens, so two live processes must never share one. Each
name is a lease in Redis (`keys.worker_name`) with a TTL, renewed while the
worker lives. The lease's value says who holds it: host, boot id, pid
namespace, pid and the process's start time. That is enough to prove, on the
same host, that the holder is gone: a worker killed with kill -9 leaves a
lease whose process no longer exists (or whose pid now belongs to a process
started later), and a new process may take that name at once, without waiting
for the TTL. A holder on another host, or in another pid namespace (a
container), cannot be checked from here: its lease is only free once it
lapses.

Without WORKER_NAME or WORKER_INSTANCE, a worker takes the lowest instance
number whose name (`<host>-<n>`) is free or held by a dead process. A restart
after a crash therefore finds its own number again, the lowest one that a
dead process left; when several workers died at once, each restart takes one
of their names and with it that name's unfinished jobs. A live worker's name
is never taken. WORKER_NAME or WORKER_INSTANCE pins the name; a pinned name
held by a live process stops the start with an error naming the variable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError, WatchError

from streamworker.protocol import keys
from streamworker.protocol.connections import key_owner
from streamworker.protocol.settings import SettingsError
from streamworker.retry import with_backoff

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("streamworker.instance")

# Automatic instance numbers stop here: a host with this many live workers is
# a misconfiguration, not a deployment.
MAX_INSTANCES = 1024


class NameTaken(SettingsError):
    """The name this worker must use belongs to another live process."""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""  # not Linux, or /proc hidden: what we cannot read, we cannot compare


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot), from /proc; None
    when no such process exists. 0 where /proc cannot tell (not Linux)."""
    if pid <= 0:
        return None  # never a process; os.kill would signal a whole group
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except OSError:
        pass
    else:
        # The command name (field 2) may hold spaces and parentheses; the
        # fields after its closing parenthesis start at field 3 (the state),
        # and the start time is field 22. A zombie (killed, not yet reaped by
        # its parent) holds nothing any more.
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, under another user
    return 0


@dataclass(frozen=True)
class Holder:
    """A process that holds a name, as its lease records it."""

    host: str
    boot: str
    pidns: str
    pid: int
    start: int

    @classmethod
    def of_pid(cls, pid: int) -> Holder:
        return cls(
            host=socket.gethostname(),
            boot=_read("/proc/sys/kernel/random/boot_id"),
            pidns=_pid_namespace(),
            pid=pid,
            start=_start_time(pid) or 0,
        )

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Holder:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            # Not written by a worker: nothing here can prove its writer gone.
            return cls(host="an unknown holder", boot="", pidns="", pid=0, start=0)

    def gone(self, here: Holder) -> bool | None:
        """True: this process no longer exists; False: it runs; None: it
        lives where `here` (this process) cannot look: another host, another
        boot or another pid namespace."""
        if (self.host, self.boot, self.pidns) != (here.host, here.boot, here.pidns):
            return None
        start = _start_time(self.pid)
        # A pid reused by a later process is not the holder: compare start times.
        return start is None or (start != self.start and start != 0 and self.start != 0)

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


class NameLease:
    """This process's hold on one worker name."""

    def __init__(self, redis: Redis, name: str, *, ttl_seconds: float, me: Holder) -> None:
        self.redis = redis
        self.name = name
        self.key = keys.worker_name(name)
        self.ttl_seconds = ttl_seconds
        self.me = me
        self.value = me.encode()
        self.instance: int | None = None  # set when the number was chosen here
        self.previous: Holder | None = None  # the dead process we took it from

    async def take(self) -> Holder | None:
        """Take the name if it is free, ours, or its holder is gone; else
        return the holder (alive, or where we cannot check). Compare and set
        under WATCH, so of two processes taking one name, one wins."""
        while True:
            try:
                async with (
                    key_owner(self.redis, self.key) as redis,
                    redis.pipeline(transaction=True) as pipe,
                ):
                    await pipe.watch(self.key)
                    raw = await pipe.get(self.key)
                    other = None
                    if raw is not None and raw.decode() != self.value:
                        other = Holder.decode(raw)
                        if other.gone(self.me) is not True:
                            return other
                    pipe.multi()
                    pipe.set(self.key, self.value, px=int(self.ttl_seconds * 1000))
                    await pipe.execute()
                    self.previous = other
                    return None
            except WatchError:
                continue  # another process moved first: look again

    async def renew(self) -> Holder | None:
        """Extend the lease; None while it is ours, else who holds it now.
        A lease Redis lost (a restart without its data) is taken again."""
        while True:
            try:
                async with (
                    key_owner(self.redis, self.key) as redis,
                    redis.pipeline(transaction=True) as pipe,
                ):
                    await pipe.watch(self.key)
                    raw = await pipe.get(self.key)
                    if raw is not None and raw.decode() != self.value:
                        return Holder.decode(raw)
                    if raw is None:
                        log.warning("the lease on worker name %s was gone; taken again", self.name)
                    pipe.multi()
                    pipe.set(self.key, self.value, px=int(self.ttl_seconds * 1000))
                    await pipe.execute()
                    return None
            except WatchError:
                continue

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew every third of the TTL until cancelled; if another process
        holds the name by then (we stalled past the TTL, or Redis lost the
        lease and someone took it), call `on_lost` and stop: a worker must
        not run under a name another one uses."""
        while True:
            await anyio.sleep(self.ttl_seconds / 3)
            try:
                other = await self.renew()
            except (RedisError, OSError) as exc:
                log.warning("worker name lease renewal failed (%s); retrying", exc)
                continue
            if other is not None:
                log.error(
                    "worker name %s is now held by %s: stopping rather than share it",
                    self.name,
                    other,
                )
                on_lost()
                return

    async def release(self) -> None:
        """Give the name back at a clean exit (if it is still ours); on any
        error the TTL frees it instead."""
        with anyio.CancelScope(shield=True):
            try:
                async with (
                    key_owner(self.redis, self.key) as redis,
                    redis.pipeline(transaction=True) as pipe,
                ):
                    await pipe.watch(self.key)
                    if await pipe.get(self.key) == self.value.encode():
                        pipe.multi()
                        pipe.delete(self.key)
                        await pipe.execute()
            except (RedisError, OSError):
                pass


async def claim(
    redis: Redis, *, pinned: tuple[str, str] | None, ttl_seconds: float, instance: int | None
) -> NameLease:
    """The lease on this worker's name: the pinned one (name, variable that
    pinned it), or the lowest free `<host>-<n>`. Raises NameTaken."""
    me = Holder.of_pid(os.getpid())
    if pinned is not None:
        lease = await _claim_pinned(redis, *pinned, ttl_seconds=ttl_seconds, me=me)
        lease.instance = instance
    else:
        lease = await _claim_lowest(redis, ttl_seconds=ttl_seconds, me=me)
    if lease.previous is not None:
        log.info(
            "worker name %s taken over from %s, which is gone: its unfinished jobs resume here",
            lease.name,
            lease.previous,
        )
    return lease


async def _claim_pinned(
    redis: Redis, name: str, variable: str, *, ttl_seconds: float, me: Holder
) -> NameLease:
    lease = NameLease(redis, name, ttl_seconds=ttl_seconds, me=me)
    # A holder we cannot check (another host or container) is alive for as
    # long as it renews: wait one TTL (and a poll) for its lease to lapse.
    poll = ttl_seconds / 6
    deadline = time.monotonic() + ttl_seconds + poll
    waiting = False
    while (other := await with_backoff(lease.take)) is not None:
        alive = other.gone(me) is False
        if alive or time.monotonic() > deadline:
            state = "a live worker" if alive else "a worker that keeps renewing it"
            raise NameTaken(
                f"{variable}: worker name {name!r} is in use by {state} ({other}); "
                f"each worker process needs its own {variable}"
            )
        if not waiting:
            log.warning(
                "worker name %s is held by %s, which this host cannot check: "
                "waiting up to %.0fs for its lease to lapse",
                name,
                other,
                ttl_seconds,
            )
            waiting = True
        await anyio.sleep(poll)
    return lease


async def _claim_lowest(redis: Redis, *, ttl_seconds: float, me: Holder) -> NameLease:
    for n in range(MAX_INSTANCES):
        lease = NameLease(redis, f"{me.host}-{n}", ttl_seconds=ttl_seconds, me=me)
        if await with_backoff(lease.take) is None:
            lease.instance = n
            return lease
    raise NameTaken(
        f"WORKER_INSTANCE: no free instance number below {MAX_INSTANCES} on {me.host}; "
        "set WORKER_INSTANCE or WORKER_NAME"
    )
