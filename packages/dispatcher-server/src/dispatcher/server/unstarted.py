"""Jobs the scheduler lets go before they start: each settled, counted and logged.

A job may end without reaching a worker: refused over a limit of ``service.limits``,
discarded by ``on_duplicate``, cancelled while it waited, abandoned at a stop, or handed
back when its broker no longer holds it. :class:`UnstartedJobs` tells its broker
(``settle``), counts it where it is counted (``status``) and writes its line, on the
scheduler's logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dispatcher.schema import Outcome
from dispatcher.schema.log_fields import REASON
from dispatcher.server.jobs import Job, job_fields, listed
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.settlement import ABANDONED, DISCARDED, REFUSED
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.scheduler")


class UnstartedJobs:
    """Settles, counts and logs the jobs that end unstarted (see the module docstring)."""

    def __init__(self, stats: ServiceStats, settle: Callable[[Job, str], None]) -> None:
        self._stats = stats
        self.settle = settle
        """Tells *job*'s broker how it ended (a durable broker acknowledges it)."""
        self._refusals = RateLimitedLog(logger, logging.WARNING)
        self._hand_backs = RateLimitedLog(logger, logging.INFO)

    def refused(self, job: Job, limit: str, value: int) -> bool:
        """*job* is refused: the limit *limit* of ``service.limits`` (*value*) is reached.

        Returns ``False`` (what ``submit`` returns for it).
        """
        self._stats.rejected["overloaded"] += 1
        self.settle(job, REFUSED)
        fields = None
        if logger.isEnabledFor(logging.WARNING):
            fields = job_fields("message_rejected", job)
            fields[REASON] = "overloaded"
        self._refusals.log(
            "task %s (uuid %s) refused: service.limits.%s (%d) reached",
            job.task,
            job.uuid,
            limit,
            value,
            extra=fields,
        )
        return False

    def discarded(self, job: Job) -> None:
        """*job* is dropped by ``on_duplicate``: a duplicate of it is active."""
        self._stats.discarded += 1
        self.settle(job, DISCARDED)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "task %s (uuid %s) discarded: a duplicate is active",
                job.task,
                job.uuid,
                extra=job_fields("task_discarded", job),
            )

    def handed_back(self, job: Job) -> None:
        """*job*, which waited, is not started: its broker no longer holds it."""
        self.settle(job, ABANDONED)
        self._hand_backs.log(
            "task %s (uuid %s) not started: its broker no longer holds it (the lease may "
            "have run out); handed back",
            job.task,
            job.uuid,
        )

    def abandoned_ahead(self, jobs: list[Job]) -> None:
        """*jobs*, held ahead by a worker and given back while the service stops, are abandoned."""
        for job in jobs:
            self.settle(job, ABANDONED)
        if jobs:
            logger.warning(
                "shutting down with %s held ahead by a worker abandoned: %s",
                counted(len(jobs), "task"),
                listed(jobs),
            )

    def cancelled(self, job: Job) -> None:
        """*job*, taken out of a place that held it unstarted, is cancelled."""
        self._stats.task_ended(job.task, Outcome.CANCELLED)
        self.settle(job, Outcome.CANCELLED)
