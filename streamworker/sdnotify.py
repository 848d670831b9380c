"""systemd's service notifications (sd_notify(3)), spoken directly.

A service of `Type=notify` tells systemd what it is doing by sending
newline-separated `KEY=value` lines in one datagram to the AF_UNIX socket
named in `$NOTIFY_SOCKET`: `READY=1` once it serves, `STATUS=` for
`systemctl status`, `WATCHDOG=1` at least every `$WATCHDOG_USEC`,
`STOPPING=1` when it begins to stop, `EXTEND_TIMEOUT_USEC=` while a stop
legitimately takes long. The protocol is one `sendto`, so it is written here
rather than pulled in as a dependency.

Both the workers and the gateway use it (and the gateway's supervisor also
listens on such a socket for its own processes), so it imports nothing from
either side. Outside systemd (`$NOTIFY_SOCKET` unset) every call is a no-op.
A notification that cannot be delivered is dropped: a service must never
stop serving because its supervisor is busy.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import anyio

log = logging.getLogger("sdnotify")


def socket_address(name: str) -> str | bytes:
    """`$NOTIFY_SOCKET` as `sendto` takes it: a leading `@` names a socket
    in the abstract namespace (no file; a NUL byte in front)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    def __init__(self, address: str = "", watchdog_usec: int = 0) -> None:
        self.address = address
        # Seconds between watchdog pings: half the deadline systemd enforces,
        # so one late tick of a busy loop is not yet a restart.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec > 0 else 0.0
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd (or the gateway's supervisor) set up for this
        process. The watchdog is ours only if `$WATCHDOG_PID` is unset or is
        our pid: a variable inherited by a child process is not its own."""
        env = os.environ if env is None else env
        usec = 0
        pid = env.get("WATCHDOG_PID", "")
        if not pid or pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", "0") or 0)
            except ValueError:
                usec = 0
        return cls(env.get("NOTIFY_SOCKET", ""), usec)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send `KEY=value` lines in one datagram; True if it was delivered."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), socket_address(self.address))
        except OSError as exc:
            if not self._warned:  # once: systemd restarting is no reason to flood the log
                log.warning("cannot notify %s (%s)", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # systemd 253+ wants the monotonic clock with RELOADING=1; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more from now before a start or stop times out."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    async def keep_alive(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping the watchdog every half interval while `healthy()` holds.
        Sent from the event loop, so a hung loop stops the pings too; an
        unhealthy service stops pinging and systemd restarts it."""
        if not self.watchdog_interval:
            return
        while True:
            if healthy():
                self.watchdog()
            await anyio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def parse(datagram: bytes) -> dict[str, str]:
    """A notification's lines as a dict (the gateway's supervisor reads its
    processes' notifications with this; so do the tests)."""
    fields: dict[str, str] = {}
    for line in datagram.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields
