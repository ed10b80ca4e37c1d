"""The service's handle on one worker process: its state, its job, and the signals it gets.

A worker moves through ``STARTING → READY ⇄ BUSY → STOPPING → EXITED`` (it may also go to
``STOPPING`` or ``EXITED`` from any earlier state). Every transition is a method here, so
the rules live in one place. A running task that times out or is cancelled gets SIGUSR1
(``DispatcherCancel`` in the task); still running ``cancel_grace`` seconds later, its worker
gets SIGTERM, then SIGKILL.

The handle talks to its process through the small :class:`Process` protocol and schedules
through :class:`~dispatcher.server.timers.Scheduling`, so that it is tested without
processes or an event loop.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from collections.abc import Callable
from typing import Final, Protocol

import anyio

from dispatcher.schema import Outcome
from dispatcher.server.jobs import Job
from dispatcher.server.logsafe import get_logger
from dispatcher.server.protocol import STOP_LINE
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.timers import Scheduling

logger = get_logger("dispatcher.workers")

KILL_AFTER_TERM: Final = 0.5
"""Seconds between SIGTERM and SIGKILL when a cancelled task will not stop."""


class WorkerStatus(enum.Enum):
    """Where a worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    EXITED = "exited"


LIVE: Final = frozenset({WorkerStatus.STARTING, WorkerStatus.READY, WorkerStatus.BUSY})
"""Statuses of workers that count towards the pool's size."""


class Process(Protocol):
    """What a handle needs of its process (a :class:`~dispatcher.server.launcher.WorkerProcess`)."""

    pid: int

    def send(self, line: bytes) -> bool:
        """Write a line; ``False`` when part of it waits for :meth:`flush`."""

    async def flush(self) -> None:
        """Write what waits."""

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal."""

    def kill(self) -> None:
        """SIGKILL."""

    def terminate(self) -> None:
        """SIGTERM."""


_timeouts = RateLimitedLog(logger, logging.WARNING)

_REPORTABLE: Final = frozenset({Outcome.OK.value, Outcome.ERROR.value})
"""Outcomes a worker reports as they are (besides ``cancelled`` and ``exit``)."""


class WorkerHandle:
    """One worker process as the service sees it.

    *on_backlog* is called with the handle when a line could not be written whole (its
    process must then be flushed asynchronously).
    """

    def __init__(
        self,
        worker_id: int,
        timers: Scheduling,
        cancel_grace: float,
        on_backlog: Callable[[WorkerHandle], None] = lambda handle: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = worker_id
        self.created = clock()
        self.status = WorkerStatus.STARTING
        self.process: Process | None = None
        self.pid: int | None = None
        self.job: Job | None = None
        """The job it runs (``BUSY``), else ``None``."""
        self.tasks_done = 0
        self.idle_since = 0.0
        self.cancelling: Outcome | None = None
        """Why the running task is being cancelled (``timeout`` or ``cancelled``), if it is."""
        self.killed_for: Outcome | None = None
        """The outcome its task gets because the service killed the worker: ``killed`` (the
        task ignored its cancel) or ``memory_exceeded``."""
        self.started = anyio.Event()
        """Set when the worker has reported ready (or failed to import the task modules)."""
        self.gone = anyio.Event()
        """Set when the worker's process has ended."""
        self._timers = timers
        self._cancel_grace = cancel_grace
        self._on_backlog = on_backlog
        self._clock = clock

    def __repr__(self) -> str:
        return f"<worker {self.id} pid={self.pid} {self.status.value}>"

    @property
    def is_ready(self) -> bool:
        """Whether it waits for a job."""
        return self.status is WorkerStatus.READY

    @property
    def is_live(self) -> bool:
        """Whether it counts towards the pool's size (starting, ready or busy)."""
        return self.status in LIVE

    # -- transitions ---------------------------------------------------------------------

    def attach(self, process: Process) -> None:
        """Its process has been forked. A handle stopped meanwhile kills it at once."""
        self.process, self.pid = process, process.pid
        if self.status is WorkerStatus.STOPPING:
            process.kill()

    def ready(self) -> bool:
        """The worker reported ready: ``STARTING → READY``. ``False`` if it was stopped."""
        self.started.set()
        if self.status is not WorkerStatus.STARTING:
            return False
        self.status = WorkerStatus.READY
        self.idle_since = self._clock()
        return True

    def run(self, job: Job) -> None:
        """Give it *job*: ``READY → BUSY``; the job's timeout starts now."""
        if self.status is not WorkerStatus.READY:
            raise RuntimeError(f"{self!r} cannot run a job")
        self.status = WorkerStatus.BUSY
        self.job = job
        self._send(job.line)
        if job.timeout > 0:
            self._timers.call_later(job.timeout, self._timed_out, job)

    def finish(self, reported: str) -> tuple[Job | None, Outcome]:
        """Its task ended as the worker *reported*: ``BUSY → READY``; returns job and outcome.

        After ``DispatcherExit`` it goes to ``STOPPING`` instead (the worker exits).
        """
        job, self.job = self.job, None
        self.tasks_done += 1
        if reported == "cancelled":
            outcome = self.cancelling or Outcome.CANCELLED
        elif reported == "exit":
            outcome = Outcome.OK
            self.status = WorkerStatus.STOPPING  # it exits now
        elif reported in _REPORTABLE:
            outcome = Outcome(reported)
        else:  # not a word a worker says: count it as the task's failure, not ours
            outcome = Outcome.ERROR
        self.cancelling = self.killed_for = None
        if self.status is WorkerStatus.BUSY:
            self.status = WorkerStatus.READY
            self.idle_since = self._clock()
        return job, outcome

    def stop(self) -> None:
        """Ask it to exit (after its current task, if it has one): ``→ STOPPING``."""
        if self.status in (WorkerStatus.STOPPING, WorkerStatus.EXITED):
            return
        was_starting = self.status is WorkerStatus.STARTING
        self.status = WorkerStatus.STOPPING
        if self.process is None:
            return  # killed as soon as it is attached
        if was_starting:
            self.process.kill()
        else:
            self._send(STOP_LINE)

    def kill(self, outcome: Outcome | None = None) -> None:
        """Kill it now (``→ STOPPING``); its task, if any, ends as *outcome*."""
        if self.status is WorkerStatus.EXITED:
            return
        if outcome is not None and self.killed_for is None:
            self.killed_for = outcome
        self.status = WorkerStatus.STOPPING
        if self.process is not None:
            self.process.kill()

    def terminate(self) -> Job | None:
        """SIGTERM it now (``→ STOPPING``), taking its job away: the caller accounts for it."""
        job, self.job = self.job, None
        if self.status is not WorkerStatus.EXITED:
            self.status = WorkerStatus.STOPPING
            if self.process is not None:
                self.process.terminate()
        return job

    def exited(self) -> tuple[Job | None, Outcome | None, bool]:
        """Its process ended: ``→ EXITED``.

        Returns the job it ran (if any), that job's outcome, and whether the end was expected
        (it had been asked to stop).
        """
        expected = self.status is WorkerStatus.STOPPING
        self.status = WorkerStatus.EXITED
        self.gone.set()
        self.started.set()
        job, self.job = self.job, None
        outcome = None if job is None else (self.killed_for or Outcome.WORKER_LOST)
        return job, outcome, expected

    # -- cancelling ----------------------------------------------------------------------

    def cancel(self, reason: Outcome = Outcome.CANCELLED) -> None:
        """Cancel the running task: SIGUSR1 now, SIGTERM and SIGKILL if it resists."""
        job = self.job
        if self.cancelling is not None or job is None or self.process is None:
            return
        self.cancelling = reason
        self.process.signal(signal.SIGUSR1)
        self._timers.call_later(self._cancel_grace, self._escalate, job)

    def _timed_out(self, job: Job) -> None:
        if self.job is job:
            _timeouts.log(
                "task %s (uuid %s) exceeded its timeout of %g s: cancelling it",
                job.task,
                job.uuid,
                job.timeout,
            )
            self.cancel(Outcome.TIMEOUT)

    def _escalate(self, job: Job) -> None:
        if self.job is not job or self.process is None:
            return
        logger.warning(
            "task %s (uuid %s) is still running %g s after its cancel: terminating worker %d",
            job.task,
            job.uuid,
            self._cancel_grace,
            self.id,
        )
        self.killed_for = Outcome.KILLED
        self.status = WorkerStatus.STOPPING
        self.process.terminate()
        self._timers.call_later(KILL_AFTER_TERM, self._kill_if_running, job)

    def _kill_if_running(self, job: Job) -> None:
        if self.job is job and self.process is not None:
            self.process.kill()

    # -- talking to it -------------------------------------------------------------------

    def reply(self, line: bytes) -> None:
        """Answer the worker's control request."""
        self._send(line)

    def _send(self, line: bytes) -> None:
        if self.process is not None and not self.process.send(line):
            self._on_backlog(self)
