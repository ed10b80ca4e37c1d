"""The service's handle on one worker process: its state, its job, and the signals it gets.

A worker moves through ``STARTING → READY ⇄ BUSY → STOPPING → EXITED`` (it may also go to
``STOPPING`` or ``EXITED`` from any earlier state). Every transition is a method of the
handle, so the rules live in one class. While a backlog exists, a busy worker may also hold the next
jobs (up to :data:`~dispatcher.server.protocol.PIPELINE_DEPTH`), sent ahead several in one
write, so that the next starts the moment the current one ends. A task that times out or is
cancelled gets the cancel signal of its request (``DispatcherCancel`` in the task; a job
held ahead ends ``cancelled`` without running); still running ``cancel_grace`` seconds
later, its worker gets SIGTERM, then SIGKILL.

The handle talks to its process through the small
:class:`~dispatcher.server.handle_status.Process` protocol and schedules through
:class:`~dispatcher.server.timers.Scheduling`, so that it is tested without processes or an
event loop. Its jobs held ahead are handled in :mod:`~dispatcher.server.held_ahead`, its
cancels, timeouts and kills in :mod:`~dispatcher.server.cancel_escalation` (its base
classes).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import anyio

from dispatcher.schema import Outcome
from dispatcher.server.cancel_escalation import CancelEscalation
from dispatcher.server.handle_status import LIVE, Process, WorkerStatus
from dispatcher.server.held_ahead import HeldAhead
from dispatcher.server.jobs import Job
from dispatcher.server.log_records import get_logger
from dispatcher.server.protocol import STOP_LINE, start_by_of
from dispatcher.server.timers import Cancellable, Scheduling

logger = get_logger("dispatcher.workers")

_EXPIRY_MARGIN: Final = 1.0
"""Seconds: a held job whose ``start_by`` is nearer than this when its turn comes may come
back expired, so its start is only told once it is known to have run."""

_UNSTARTED: Final = frozenset({"recalled", "expired"})
"""What a worker reports for a request it ended without starting it (given back)."""

_REPORTABLE: Final = {outcome.value: outcome for outcome in (Outcome.OK, Outcome.ERROR)}
"""Outcomes a worker reports as they are (besides ``cancelled`` and ``exit``), by word."""


class WorkerHandle(HeldAhead, CancelEscalation):
    """One worker process as the service sees it.

    *on_backlog* is called with the handle when a line could not be written whole (its
    process must then be flushed asynchronously). *on_start*, if given, is called with
    ``(job, worker id)`` when a job starts: sent to it idle, or held ahead and its turn come.
    """

    def __init__(
        self,
        worker_id: int,
        timers: Scheduling,
        cancel_grace: float,
        on_backlog: Callable[[WorkerHandle], None] = lambda handle: None,
        clock: Callable[[], float] = time.monotonic,
        on_start: Callable[[Job, int], None] | None = None,
    ) -> None:
        self.id = worker_id
        self.created = clock()
        self.status = WorkerStatus.STARTING
        self.process: Process | None = None
        self.pid: int | None = None
        self.job: Job | None = None
        """The job it runs (``BUSY``), else ``None``."""
        self.job_since = 0.0
        """When :attr:`job` started, on the clock (meaningless without a job)."""
        self.ahead: deque[Job] = deque()
        """Jobs sent to it to run next, not started yet (while it is ``BUSY``)."""
        self.tasks_done = 0
        self.idle_since = 0.0
        self.cancelling: Outcome | None = None
        """Why the running task is being cancelled (``timeout`` or ``cancelled``), if it is."""
        self.killed_for: Outcome | None = None
        """The outcome its task gets because the service killed the worker: ``killed`` (the
        task ignored its timeout), ``cancelled`` (it ignored a cancel) or ``memory_exceeded``."""
        self.distrusted = False
        """Set when it sent an event that was not its own (a ``done`` its task forged): what
        it sends after is ignored, its job ends ``worker_lost``."""
        self.started = anyio.Event()
        """Set when the worker has reported ready (or failed to import the task modules)."""
        self.gone = anyio.Event()
        """Set when the worker's process has ended."""
        self._doomed = False
        """Killed or terminated: it will start nothing more."""
        self._requests = 0
        """Run requests sent to its process (numbered from 1, as the worker counts them)."""
        self._cancelled_ahead: dict[int, Outcome] = {}
        """Jobs held ahead that were cancelled, by request number."""
        self.recalled = False
        """Whether its jobs held ahead were recalled (:meth:`recall_ahead`): it ends unstarted
        every request it had not started then, and any sent later, so it is sent no more."""
        self._start_unsure: Job | None = None
        """The running job, if it may yet come back unstarted (recalled, or expired): its
        start is told (*on_start*) only once it is known to have run."""
        self._unstarted: list[Job] = []
        """Jobs the worker ended unstarted (recalled, or expired: they came after their
        ``start_by``), to be taken back (:meth:`take_unstarted`)."""
        self._timers = timers
        self._deadline: Cancellable | None = None
        """The timeout of the running job, if it has one."""
        self._cancel_grace = cancel_grace
        self._on_backlog = on_backlog
        self._clock = clock
        self._on_start = on_start
        """Called with ``(job, worker id)`` when a job starts here, if given."""

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
        """Give it *job*: ``READY → BUSY``, and the job's timeout starts now."""
        if self.status is not WorkerStatus.READY:
            raise RuntimeError(f"{self!r} cannot run a job")
        self.status = WorkerStatus.BUSY
        self.job = job
        self.job_since = self._clock()
        self._requests += 1
        self._send(job.line)
        self._start_clock(job)
        if self._on_start is not None:
            if self._may_expire(job):
                self._start_unsure = job  # told at its end if it ran
            else:
                self._on_start(job, self.id)

    def hold_ahead(self, jobs: Sequence[Job]) -> None:
        """Send it *jobs* (at most :attr:`room_ahead`) in one write, to run after its task.

        Each one's timeout starts when its turn comes.
        """
        if len(jobs) > self.room_ahead:
            raise RuntimeError(f"{self!r} cannot hold {len(jobs)} more jobs ahead")
        if jobs:
            self.ahead.extend(jobs)
            self._requests += len(jobs)
            self._send(b"".join([job.line for job in jobs]))

    def finish(self, reported: str) -> tuple[Job | None, Outcome]:
        """Its task ended as the worker *reported*: ``BUSY → READY``; returns job and outcome.

        After ``DispatcherExit`` it goes to ``STOPPING`` instead (the worker exits).
        """
        job, self.job = self.job, None
        self._stop_clock()
        unsure, self._start_unsure = self._start_unsure, None
        unstarted = reported in _UNSTARTED
        if reported == "recalled" and not self.recalled:
            # Not the service's recall (its signal was sent by hand?): the worker now gives
            # back whatever it is sent, so it is sent no more, and is replaced.
            logger.warning("worker %d was recalled, not by this service: replacing it", self.id)
            self.recalled = True
        if job is not None and unstarted and self.cancelling is not Outcome.CANCELLED:
            # It never ran here (recalled, or it came to the worker after its start_by): it
            # is given back. A timeout counted from its turn says nothing of a job not run.
            self._unstarted.append(job)
            job = None
        elif not unstarted:
            self.tasks_done += 1
            if job is not None and job is unsure and self._on_start is not None:
                self._on_start(job, self.id)  # it did start, after all
        reason = self.cancelling
        if reported == "cancelled" or reported in _UNSTARTED:
            outcome = reason or Outcome.CANCELLED
        elif reported == "exit":
            outcome = Outcome.OK
            self.status = WorkerStatus.STOPPING  # it exits now
        else:  # a word no worker says counts as the task's failure, not ours
            outcome = _REPORTABLE.get(reported, Outcome.ERROR)
        self.cancelling = self.killed_for = None
        if self.ahead and reported != "exit" and not self._doomed:
            self._next()
        elif self.status is WorkerStatus.BUSY:
            self.status = WorkerStatus.READY
            self.idle_since = self._clock()
        return job, outcome

    def _next(self) -> None:
        """The worker starts the job held ahead: it becomes the running one."""
        self.job = job = self.ahead.popleft()
        self.job_since = self._clock()
        number = self._running
        cancelled = self._cancelled_ahead.pop(number, None)
        if cancelled is None:
            self._start_clock(job)
            if self._on_start is not None:
                if self.recalled or self._may_expire(job):
                    self._start_unsure = job  # told at its end if it ran
                else:
                    self._on_start(job, self.id)
        else:  # the worker ends it at once; watch that it does
            self.cancelling = cancelled
            self._timers.call_later(self._cancel_grace, self._escalate, job, number)

    def _may_expire(self, job: Job) -> bool:
        """Whether the worker may find *job* past its ``start_by`` (and not run it).

        The worker takes it up as soon as it has reported the job ahead of it, so about now:
        a deadline more than :data:`_EXPIRY_MARGIN` ahead is surely not past then.
        """
        deadline = start_by_of(job.line)
        return deadline is not None and self._clock() + _EXPIRY_MARGIN >= deadline

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

    def exited(self) -> tuple[Job | None, Outcome | None, bool]:
        """Its process ended: ``→ EXITED``.

        Returns the job it ran (if any), that job's outcome, and whether the end was expected
        (it had been asked to stop).
        """
        expected = self.status is WorkerStatus.STOPPING
        self.status = WorkerStatus.EXITED
        self._doomed = True
        self.gone.set()
        self.started.set()
        job, self.job = self.job, None
        self._stop_clock()
        self._start_unsure = None
        outcome = None if job is None else (self.killed_for or Outcome.WORKER_LOST)
        return job, outcome, expected

    # -- talking to it -------------------------------------------------------------------

    def reply(self, line: bytes) -> None:
        """Answer the worker's control request."""
        self._send(line)

    def _send(self, line: bytes) -> None:
        if self.process is not None and not self.process.send(line):
            self._on_backlog(self)
