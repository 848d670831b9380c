"""What a worker tells systemd (streamworker/sdnotify.py speaks the protocol):
READY=1 once its model is loaded and its consumer group joined; a STATUS=
line that `systemctl status` shows (slots in use, draining); WATCHDOG=1 from
the event loop while the engine lives; STOPPING=1 and, while running jobs
drain, EXTEND_TIMEOUT_USEC so a long drain is not killed as a hung stop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from streamworker.heartbeat import engine_alive

if TYPE_CHECKING:
    from streamworker.sdnotify import Notifier
    from streamworker.worker import Worker

# How often the STATUS line is looked at (it is sent only when it changed).
STATUS_EVERY_SECONDS = 1.0
# A drain asks for this much more time, again and again, while it lasts...
EXTEND_WINDOW_SECONDS = 15.0
# ...but no longer than the grace plus this: the hand-back after it is quick,
# and a drain stuck past that is hung, for systemd to kill.
EXTEND_SLACK_SECONDS = 30.0


class WorkerNotifications:
    def __init__(self, notifier: Notifier, worker: Worker) -> None:
        self.notifier = notifier
        self.worker = worker
        self.stopping_since: float | None = None
        self._last_status = ""
        self._last_extend = 0.0

    def status_line(self) -> str:
        w = self.worker
        trouble = ""
        if not engine_alive(w.engine):
            stalled = getattr(w.engine, "stalled", None)
            stuck = callable(stalled) and stalled()
            trouble = "engine stuck (no progress): " if stuck else "engine stopped: "
        if self.stopping_since is not None:
            left = max(0.0, w.shutdown_grace - (time.monotonic() - self.stopping_since))
            return f"{trouble}draining: {len(w.active)} job(s) left, {left:.0f}s of grace"
        if trouble:
            return trouble + "not serving"
        return f"serving {len(w.active)}/{w.slots} slots, {w.jobs_done} job(s) done"

    def ready(self) -> None:
        self._last_status = self.status_line()
        self.notifier.ready(self._last_status)

    def stopping(self) -> None:
        """SIGTERM, or a failure that makes the worker drain and exit."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            self._last_status = self.status_line()
            self.notifier.stopping(self._last_status)
            self._extend()

    def _extend(self) -> None:
        assert self.stopping_since is not None
        elapsed = time.monotonic() - self.stopping_since
        if elapsed < self.worker.shutdown_grace + EXTEND_SLACK_SECONDS:
            self.notifier.extend_timeout(EXTEND_WINDOW_SECONDS)
            self._last_extend = time.monotonic()

    async def run(self) -> None:
        """The STATUS line while the worker runs (the watchdog pings are
        Notifier.keep_alive's)."""
        while True:
            await anyio.sleep(STATUS_EVERY_SECONDS)
            line = self.status_line()
            if line != self._last_status:
                self._last_status = line
                self.notifier.status(line)
            if (
                self.stopping_since is not None
                and self.worker.active
                and time.monotonic() - self._last_extend >= EXTEND_WINDOW_SECONDS / 3
            ):
                self._extend()
