"""Outcomes of task runs: counted for status and metrics, and logged."""

from __future__ import annotations

import logging
import time

from dispatcher.config.service_settings import TaskLog
from dispatcher.schema import Outcome
from dispatcher.schema.log_fields import DURATION, ERROR, EVENT, OUTCOME, TRACEBACK, WORKER
from dispatcher.server.jobs import Job, job_fields
from dispatcher.server.log_arguments import Block, Whole
from dispatcher.server.log_records import get_logger
from dispatcher.server.settlement import SettleJob, settle_nothing
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.tasks")


class Accounting:
    """Records how each task run ended.

    *task_log* (``service.task_log``) says which per-task lines go to the log at INFO: one
    when a task ends (``end``), also one when it starts (``start_and_end``), or none
    (``off``). A failed task is logged at ERROR whatever it says. Each record carries the
    run's facts as attributes (see :mod:`dispatcher.schema.log_fields`), made only when the
    record is to be logged.
    """

    def __init__(
        self,
        stats: ServiceStats,
        settle: SettleJob = settle_nothing,
        task_log: TaskLog = "end",
    ) -> None:
        self._stats = stats
        self._settle = settle
        self._end_level = logging.INFO if task_log != "off" else logging.DEBUG
        """The level of the line of a task that ended without failing."""
        self.logs_starts = task_log == "start_and_end"
        """Whether :meth:`started` is to be called for each task that starts."""

    def started(self, job: Job, worker_id: int) -> None:
        """*job* starts on worker *worker_id* (called only when :attr:`logs_starts`)."""
        if logger.isEnabledFor(logging.INFO):
            fields = job_fields("task_started", job)
            fields[WORKER] = worker_id
            logger.info(
                "task %s (uuid %s) started on worker %d",
                job.task,
                job.uuid,
                worker_id,
                extra=fields,
            )

    def finished(
        self,
        job: Job,
        outcome: Outcome,
        worker_id: int,
        started: float | None,
        finished: float,
        error: str | None = None,
        traceback: str = "",
        result: str | None = None,
        result_note: str | None = None,
        final: bool = False,
        unregistered: bool = False,
    ) -> None:
        """A worker reported the end of *job* (it ran from *started* to *finished*).

        *started* is ``None`` for a job that ended without starting (cancelled while held
        ahead by a worker that is gone): it has no queue wait or run time to record.
        *error* and *traceback* say why it failed; *result* is its return value as JSON
        text, or *result_note* says why none was kept (both only for jobs whose broker
        acknowledges); *final* that its error is one no attempt can cure. *unregistered*:
        the worker found no such task (a reload removed it since the job came): it fails,
        and is counted as refused (``unknown_task``), never under its name.
        """
        ran = None if started is None else finished - started
        if outcome is Outcome.OK:
            self._settle(job, outcome, result_note, result=result, ran=ran)
        else:
            self._settle(job, outcome, error, traceback=traceback or None, final=final, ran=ran)
        if unregistered:
            self._stats.task_refused()
        else:
            self._stats.task_ended(job.task, outcome)
            if started is not None:
                self._stats.timings(job.task, job.published, started, finished)
        if outcome is not Outcome.OK:
            self._failed(job, outcome, error)
        failed = outcome is Outcome.ERROR
        level = logging.ERROR if failed else self._end_level
        if not logger.isEnabledFor(level):
            return
        fields = job_fields("task_failed" if failed else "task_finished", job)
        fields[OUTCOME] = outcome.value
        fields[WORKER] = worker_id
        ran = 0.0 if ran is None else ran
        fields[DURATION] = ran
        if failed:
            fields[ERROR] = error
            fields[TRACEBACK] = Whole(traceback)
            logger.error(
                "task %s (uuid %s) failed: %s%s",
                job.task,
                job.uuid,
                error,
                Block(traceback),
                extra=fields,
            )
        else:
            logger.log(
                level,
                "task %s (uuid %s) finished %s in %.1f ms on worker %d",
                job.task,
                job.uuid,
                outcome.value,
                ran * 1000,
                worker_id,
                extra=fields,
            )

    def lost(
        self,
        job: Job,
        outcome: Outcome,
        worker_id: int,
        pid: int | None,
        started: float,
        ended: float,
    ) -> None:
        """*job* ended with its worker (``worker_lost``, ``killed``, ``memory_exceeded``).

        It ran from *started* until *ended*, when the service saw its worker gone: its queue
        wait and run time are recorded as for a job that finished.
        A ``worker_lost`` is logged apart, by :meth:`log_lost`, once the worker's exit status
        is known.
        """
        error = f"{outcome}: worker {worker_id} (pid {pid}) ended with it"
        self._settle(job, outcome, error, ran=ended - started)
        self._stats.task_ended(job.task, outcome)
        self._stats.timings(job.task, job.published, started, ended)
        self._failed(job, outcome, error)
        if outcome is not Outcome.WORKER_LOST and logger.isEnabledFor(logging.WARNING):
            logger.warning(
                "task %s (uuid %s) %s with its worker %d",
                job.task,
                job.uuid,
                "killed" if outcome is Outcome.KILLED else f"ended as {outcome}",
                worker_id,
                extra=_lost_fields(job, outcome, worker_id, ended - started, error),
            )

    def log_lost(self, job: Job, worker_id: int, pid: int | None, how: str) -> None:
        """Log that *job* ended ``worker_lost``.

        *how*: how the worker ended (``exit status 7``), or ``""``.
        """
        if not logger.isEnabledFor(logging.ERROR):
            return
        error = f"worker {worker_id} (pid {pid}) died while running it" + (
            f" ({how})" if how else ""
        )
        logger.error(
            "worker %d (pid %s) died while running task %s (uuid %s): worker_lost%s",
            worker_id,
            pid,
            job.task,
            job.uuid,
            f" ({how})" if how else "",
            extra=_lost_fields(job, Outcome.WORKER_LOST, worker_id, None, error),
        )

    def abandoned(
        self, job: Job, grace: float, worker_id: int, started: float, ended: float
    ) -> None:
        """*job* still ran when the shutdown grace ran out; its worker is being stopped.

        It ran from *started* until *ended* (the grace's end): its queue wait and run time
        are recorded as for a job that finished.
        """
        error = f"killed: still running after {grace:.0f} s of shutdown"
        if logger.isEnabledFor(logging.WARNING):
            fields = _lost_fields(job, Outcome.KILLED, worker_id, ended - started, error)
            fields[EVENT] = "task_abandoned"
            logger.warning(
                "task %s (uuid %s) still running after %.0f s: stopping worker %d",
                job.task,
                job.uuid,
                grace,
                worker_id,
                extra=fields,
            )
        self._settle(job, Outcome.KILLED, error, ran=ended - started)
        self._stats.task_ended(job.task, Outcome.KILLED)
        self._stats.timings(job.task, job.published, started, ended)
        self._failed(job, Outcome.KILLED, error)

    def _failed(self, job: Job, outcome: Outcome, error: str | None) -> None:
        """Remember a failed run for ``status`` (a cancel asked for is not a failure)."""
        if outcome is not Outcome.CANCELLED:
            self._stats.task_failed(job.task, job.uuid, outcome, error or outcome, time.time())


def _lost_fields(
    job: Job, outcome: Outcome, worker_id: int, ran: float | None, error: str
) -> dict[str, object]:
    """The attributes of a record saying that *job* ended with its worker (``task_lost``).

    *ran*: how long it ran, when known.
    """
    fields = job_fields("task_lost", job)
    fields[OUTCOME] = outcome.value
    fields[WORKER] = worker_id
    if ran is not None:
        fields[DURATION] = ran
    fields[ERROR] = error
    return fields
