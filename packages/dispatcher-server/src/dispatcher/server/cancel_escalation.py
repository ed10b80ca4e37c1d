"""How the service forces a worker: a task's cancel, escalated to SIGTERM then SIGKILL.

A base class of :class:`~dispatcher.server.workers.WorkerHandle`: the cancel of the running
task or of a job held ahead, its timeout, and the kills and terminations that stop a worker
at once.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

from dispatcher.schema import Outcome
from dispatcher.schema.log_fields import WORKER
from dispatcher.server.handle_status import Process, WorkerStatus
from dispatcher.server.jobs import Job, job_fields
from dispatcher.server.log_records import get_logger
from dispatcher.server.protocol import CANCEL_SIGNALS
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.timers import Cancellable, Scheduling

logger = get_logger("dispatcher.workers")

KILL_AFTER_TERM: Final = 0.5
"""Seconds between SIGTERM and SIGKILL when a cancelled task will not stop."""


_timeouts = RateLimitedLog(logger, logging.WARNING)


class CancelEscalation:
    """A worker handle's cancels, timeouts and kills, and the escalation of each."""

    id: int
    status: WorkerStatus
    process: Process | None
    job: Job | None
    ahead: deque[Job]
    cancelling: Outcome | None
    killed_for: Outcome | None
    _doomed: bool
    _requests: int
    _cancelled_ahead: dict[int, Outcome]
    _timers: Scheduling
    _deadline: Cancellable | None
    _cancel_grace: float

    def kill(self, outcome: Outcome | None = None) -> None:
        """Kill it now (``→ STOPPING``); its task, if any, ends as *outcome*."""
        if self.status is WorkerStatus.EXITED:
            return
        if outcome is not None and self.killed_for is None:
            self.killed_for = outcome
        self.status = WorkerStatus.STOPPING
        self._doomed = True
        if self.process is not None:
            self.process.kill()

    def terminate_then_kill(self) -> None:
        """SIGTERM it now (``→ STOPPING``); SIGKILL :data:`KILL_AFTER_TERM` s later if it is there.

        For a worker without a job: it logs the output of its last task once it has reported
        the task's end, and its SIGTERM handler still logs what waits (a SIGKILL would lose
        it). A job it runs meanwhile (it had none) is the caller's to account for.
        """
        if self.status is WorkerStatus.EXITED:
            return
        self.status = WorkerStatus.STOPPING
        self._doomed = True
        if self.process is not None:
            self.process.terminate()
            self._timers.call_later(KILL_AFTER_TERM, self._kill_unless_exited)

    def _kill_unless_exited(self) -> None:
        if self.status is not WorkerStatus.EXITED and self.process is not None:
            self.process.kill()

    def terminate(self) -> Job | None:
        """SIGTERM it now (``→ STOPPING``), taking its job away: the caller accounts for it."""
        job, self.job = self.job, None
        self._stop_clock()
        if self.status is not WorkerStatus.EXITED:
            self.status = WorkerStatus.STOPPING
            self._doomed = True
            if self.process is not None:
                self.process.terminate()
        return job

    def cancel(self, reason: Outcome = Outcome.CANCELLED) -> None:
        """Cancel the running task: its cancel signal now, SIGTERM and SIGKILL if it resists."""
        job = self.job
        if self.cancelling is not None or job is None or self.process is None:
            return
        self.cancelling = reason
        self.process.signal(_cancel_signal(self._running))
        self._timers.call_later(self._cancel_grace, self._escalate, job, self._running)

    def cancel_ahead(self, job: Job, reason: Outcome = Outcome.CANCELLED) -> bool:
        """Cancel *job*, held ahead: the worker ends it ``cancelled`` without running it.

        Returns ``False`` if *job* is not held ahead here, or was cancelled already.
        """
        for position, held in enumerate(self.ahead):
            if held is job:
                number = self._requests - len(self.ahead) + 1 + position
                if number in self._cancelled_ahead:
                    return False  # cancelled already
                self._cancelled_ahead[number] = reason
                if self.process is not None:
                    self.process.signal(_cancel_signal(number))
                return True
        return False

    @property
    def _running(self) -> int:
        """The number of the run request of :attr:`job` (as the worker counts them)."""
        return self._requests - len(self.ahead)

    def _is_running(self, job: Job, number: int) -> bool:
        """Whether *job* is still the running job, in run request *number*.

        (A job given back unstarted may come to this worker again, in a later request.)
        """
        return self.job is job and self._running == number

    def _start_clock(self, job: Job) -> None:
        """*job* starts: its timeout, if it has one, is counted from now."""
        if job.timeout > 0:
            self._deadline = self._timers.call_later(
                job.timeout, self._timed_out, job, self._running
            )

    def _stop_clock(self) -> None:
        """The running job has ended (or is taken away): its timeout no longer matters.

        Cancelled, it lets go of the job at once rather than when the timeout falls due.
        """
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, job: Job, number: int) -> None:
        if self._is_running(job, number):
            fields = None
            if logger.isEnabledFor(logging.WARNING):
                fields = job_fields("task_timeout", job)
                fields[WORKER] = self.id
            _timeouts.log(
                "task %s (uuid %s) exceeded its timeout of %g s: cancelling it",
                job.task,
                job.uuid,
                job.timeout,
                extra=fields,
            )
            self.cancel(Outcome.TIMEOUT)

    def _escalate(self, job: Job, number: int) -> None:
        if not self._is_running(job, number) or self.process is None:
            return
        if logger.isEnabledFor(logging.WARNING):
            fields = job_fields("task_terminating", job)
            fields[WORKER] = self.id
            logger.warning(
                "task %s (uuid %s) is still running %g s after its cancel: terminating worker %d",
                job.task,
                job.uuid,
                self._cancel_grace,
                self.id,
                extra=fields,
            )
        # A cancel asked for stays one when it needs force: the task ends cancelled (a
        # durable job is not run again); a timeout forced home ends the task killed.
        self.killed_for = (
            Outcome.CANCELLED if self.cancelling is Outcome.CANCELLED else Outcome.KILLED
        )
        self.status = WorkerStatus.STOPPING
        self._doomed = True
        self.process.terminate()
        self._timers.call_later(KILL_AFTER_TERM, self._kill_if_running, job, number)

    def _kill_if_running(self, job: Job, number: int) -> None:
        if self._is_running(job, number) and self.process is not None:
            self.process.kill()


def _cancel_signal(request: int) -> int:
    """The signal that cancels run request number *request* of a worker."""
    return CANCEL_SIGNALS[request % len(CANCEL_SIGNALS)]
