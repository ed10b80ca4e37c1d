"""Outcomes of task runs: counted for status and metrics, and logged."""

from __future__ import annotations

import logging

from dispatcher.schema import Outcome
from dispatcher.server.jobs import Job
from dispatcher.server.logsafe import Block, get_logger
from dispatcher.server.settlement import SettleJob, settle_nothing
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.tasks")


class Accounting:
    """Records how each task run ended."""

    def __init__(
        self,
        stats: ServiceStats,
        settle: SettleJob = settle_nothing,
    ) -> None:
        self._stats = stats
        self._settle = settle

    def finished(
        self,
        job: Job,
        outcome: Outcome,
        worker_id: int,
        started: float,
        finished: float,
        error: str | None = None,
        traceback: str = "",
        result: str | None = None,
        result_note: str | None = None,
    ) -> None:
        """A worker reported the end of *job* (it ran from *started* to *finished*).

        *error* and *traceback* say why it failed; *result* is its return value as JSON
        text, or *result_note* says why none was kept (both only for jobs whose broker
        acknowledges).
        """
        if outcome is Outcome.OK:
            self._settle(job, outcome, result_note, result=result)
        else:
            self._settle(job, outcome, error, traceback=traceback or None)
        self._stats.task_ended(job.task, outcome)
        self._stats.timings(job.task, job.published, started, finished)
        if outcome is Outcome.ERROR:
            logger.error(
                "task %s (uuid %s) failed: %s%s", job.task, job.uuid, error, Block(traceback)
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "task %s (uuid %s) finished %s in %.1f ms on worker %d",
                job.task,
                job.uuid,
                outcome,
                (finished - started) * 1000,
                worker_id,
            )

    def lost(self, job: Job, outcome: Outcome, worker_id: int, pid: int | None) -> None:
        """*job* ended with its worker (``worker_lost``, ``killed``, ``memory_exceeded``)."""
        self._settle(job, outcome, f"{outcome}: worker {worker_id} (pid {pid}) ended with it")
        self._stats.task_ended(job.task, outcome)
        if outcome is Outcome.WORKER_LOST:
            logger.error(
                "worker %d (pid %s) died while running task %s (uuid %s): worker_lost",
                worker_id,
                pid,
                job.task,
                job.uuid,
            )
        else:
            logger.warning(
                "task %s (uuid %s) %s with its worker %d",
                job.task,
                job.uuid,
                "killed" if outcome is Outcome.KILLED else f"ended as {outcome}",
                worker_id,
            )

    def abandoned(self, job: Job, grace: float, worker_id: int) -> None:
        """*job* still ran when the shutdown grace ran out; its worker is being stopped."""
        logger.warning(
            "task %s (uuid %s) still running after %.0f s: stopping worker %d",
            job.task,
            job.uuid,
            grace,
            worker_id,
        )
        self._settle(job, Outcome.KILLED, f"killed: still running after {grace:.0f} s of shutdown")
        self._stats.task_ended(job.task, Outcome.KILLED)
