"""Outcomes of task runs: counted for status and metrics, and logged."""

from __future__ import annotations

import logging
import time

from dispatcher.config.settings import TaskLog
from dispatcher.schema import Outcome
from dispatcher.server.jobs import Job
from dispatcher.server.logsafe import Block, get_logger
from dispatcher.server.settlement import SettleJob, settle_nothing
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.tasks")


class Accounting:
    """Records how each task run ended.

    *task_log* (``service.task_log``) says which per-task lines go to the log at INFO: one
    when a task ends (``end``), also one when it starts (``start_and_end``), or none
    (``off``). A failed task is logged at ERROR whatever it says.
    """

    def __init__(
        self,
        stats: ServiceStats,
        settle: SettleJob = settle_nothing,
        task_log: TaskLog = "end",
    ) -> None:
        self._stats = stats
        self._settle = settle
        self._log_ends = task_log != "off"
        self.logs_starts = task_log == "start_and_end"
        """Whether :meth:`started` is to be called for each task that starts."""

    def started(self, job: Job, worker_id: int) -> None:
        """*job* starts on worker *worker_id* (called only when :attr:`logs_starts`)."""
        logger.info("task %s (uuid %s) started on worker %d", job.task, job.uuid, worker_id)

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
    ) -> None:
        """A worker reported the end of *job* (it ran from *started* to *finished*).

        *started* is ``None`` for a job that ended without starting (cancelled while held
        ahead by a worker that is gone): it has no queue wait or run time to record.
        *error* and *traceback* say why it failed; *result* is its return value as JSON
        text, or *result_note* says why none was kept (both only for jobs whose broker
        acknowledges); *final* that its error is one no attempt can cure.
        """
        if outcome is Outcome.OK:
            self._settle(job, outcome, result_note, result=result)
        else:
            self._settle(job, outcome, error, traceback=traceback or None, final=final)
        self._stats.task_ended(job.task, outcome)
        if started is not None:
            self._stats.timings(job.task, job.published, started, finished)
        if outcome is not Outcome.OK:
            self._failed(job, outcome, error)
        if outcome is Outcome.ERROR:
            logger.error(
                "task %s (uuid %s) failed: %s%s", job.task, job.uuid, error, Block(traceback)
            )
        else:
            logger.log(
                logging.INFO if self._log_ends else logging.DEBUG,
                "task %s (uuid %s) finished %s in %.1f ms on worker %d",
                job.task,
                job.uuid,
                outcome.value,
                0.0 if started is None else (finished - started) * 1000,
                worker_id,
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
        self._settle(job, outcome, error)
        self._stats.task_ended(job.task, outcome)
        self._stats.timings(job.task, job.published, started, ended)
        self._failed(job, outcome, error)
        if outcome is not Outcome.WORKER_LOST:
            logger.warning(
                "task %s (uuid %s) %s with its worker %d",
                job.task,
                job.uuid,
                "killed" if outcome is Outcome.KILLED else f"ended as {outcome}",
                worker_id,
            )

    def log_lost(self, job: Job, worker_id: int, pid: int | None, how: str) -> None:
        """Log that *job* ended ``worker_lost``.

        *how*: how the worker ended (``exit status 7``), or ``""``.
        """
        logger.error(
            "worker %d (pid %s) died while running task %s (uuid %s): worker_lost%s",
            worker_id,
            pid,
            job.task,
            job.uuid,
            f" ({how})" if how else "",
        )

    def abandoned(
        self, job: Job, grace: float, worker_id: int, started: float, ended: float
    ) -> None:
        """*job* still ran when the shutdown grace ran out; its worker is being stopped.

        It ran from *started* until *ended* (the grace's end): its queue wait and run time
        are recorded as for a job that finished.
        """
        logger.warning(
            "task %s (uuid %s) still running after %.0f s: stopping worker %d",
            job.task,
            job.uuid,
            grace,
            worker_id,
        )
        error = f"killed: still running after {grace:.0f} s of shutdown"
        self._settle(job, Outcome.KILLED, error)
        self._stats.task_ended(job.task, Outcome.KILLED)
        self._stats.timings(job.task, job.published, started, ended)
        self._failed(job, Outcome.KILLED, error)

    def _failed(self, job: Job, outcome: Outcome, error: str | None) -> None:
        """Remember a failed run for ``status`` (a cancel asked for is not a failure)."""
        if outcome is not Outcome.CANCELLED:
            self._stats.task_failed(job.task, job.uuid, outcome, error or outcome, time.time())
