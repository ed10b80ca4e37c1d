"""The pace of worker starts: the time a new worker has to be ready, and the pauses between starts.

A worker that dies before it is ready (or that could not be started at all) pauses the
starts, longer for each that follows it in a row; so does a worker that dies without a task
after another did. A worker that becomes ready, or a task that finishes, ends the run. The
lines saying so give the pause, and the count in a row.
"""

from __future__ import annotations

import time
from typing import Final

from dispatcher.server.launch_errors import ForkServerReplaced
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.resources import shortage_text
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.pool")

STARTUP_TIMEOUT: Final = 60.0
"""Seconds a new worker has to import the task modules and report ready."""

START_BACKOFF_FIRST: Final = 0.5
"""Seconds without new workers after one died before it was ready; doubled for each that
follows it in a row (a hook or an import that kills every worker must not fork them in a
tight loop)."""

START_BACKOFF_CAP: Final = 30.0
"""The longest pause between starts while workers keep dying before they are ready (or
without a task: a worker hook that ends every idle worker must not fork them in a loop
either; the first such death pauses nothing)."""


class StartBackoff:
    """Counts the workers that die before they are ready, or idle, and pauses the starts."""

    def __init__(self) -> None:
        self.failed_starts = 0
        """Workers that died before they were ready, in a row."""
        self.idle_deaths = 0
        """Workers that died without a task, in a row (no task finished in between)."""
        self.paused_until = 0.0
        """No worker is started before this (monotonic) time: see START_BACKOFF_FIRST."""

    def worker_ready(self) -> None:
        """A worker became ready: starts are no longer failing, nor paused."""
        self.failed_starts, self.paused_until = 0, 0.0

    def task_finished(self) -> None:
        """A task finished: workers run tasks, so one that dies idle is replaced at once."""
        self.idle_deaths = 0

    def died_starting(self) -> float:
        """A worker died before it was ready: pause the starts; the pause, in seconds."""
        self.failed_starts += 1
        return self._pause(START_BACKOFF_FIRST * 2 ** (self.failed_starts - 1))

    def died_idle(self) -> float | None:
        """A worker died without a task: the pause this caused (``None``: the first such)."""
        self.idle_deaths += 1
        if self.idle_deaths > 1:
            return self._pause(START_BACKOFF_FIRST * 2 ** (self.idle_deaths - 2))
        return None

    def launch_failed(self, worker_id: int, exc: Exception) -> None:
        """Worker *worker_id* could not be started: pause the starts, as for a worker dying unready.

        Workers started together fail together: the first of them to fail says why (at
        ERROR) and pauses the starts; the others, failing within that pause, at DEBUG.
        """
        if isinstance(exc, ForkServerReplaced):  # (said as the fork server was killed)
            logger.info("worker %d was not started: %s; it starts from a new one", worker_id, exc)
            return
        reason = shortage_text(exc) or str(exc)
        if time.monotonic() < self.paused_until:
            logger.debug("could not start worker %d either: %s", worker_id, reason)
        else:
            self.failed_starts += 1
            pause = self._pause(START_BACKOFF_FIRST * 2 ** (self.failed_starts - 1))
            logger.error(
                "could not start worker %d: %s (%s in a row); starting the next one in %.1f s",
                worker_id,
                reason,
                counted(self.failed_starts, "failed start"),
                pause,
            )

    def _pause(self, pause: float) -> float:
        """Start no worker for *pause* seconds (at most ``START_BACKOFF_CAP``); the pause."""
        pause = min(pause, START_BACKOFF_CAP)
        self.paused_until = time.monotonic() + pause
        return pause

    def log_end(self, worker: WorkerHandle, starting: bool, pause: float | None, how: str) -> None:
        """Log the unexpected end of *worker*, which ran no task.

        *pause*: the seconds without starts it caused; *how*: its exit status, if known.
        """
        if starting:
            logger.error(
                "worker %d (pid %s) died before it was ready (%s%s in a row; see its own lines "
                "above for why: the task modules, the worker hooks?): starting the next one in "
                "%.1f s",
                worker.id,
                worker.pid,
                f"{how}; " if how else "",
                counted(self.failed_starts, "worker"),
                pause,
            )
        elif pause is not None:
            logger.error(
                "worker %d (pid %s) exited unexpectedly without a task (%s%s in a row; see its "
                "own lines above for why: a worker hook, on_idle?): starting the next one in "
                "%.1f s",
                worker.id,
                worker.pid,
                f"{how}; " if how else "",
                counted(self.idle_deaths, "worker"),
                pause,
            )
        else:
            logger.warning(
                "worker %d (pid %s) exited unexpectedly%s",
                worker.id,
                worker.pid,
                f" ({how})" if how else "",
            )
