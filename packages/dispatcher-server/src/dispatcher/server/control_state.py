"""The control commands that read the service's state and answer at once.

``status`` (every other read-only reply, and our counters beside them), ``main``,
``workers``, ``aio_tasks``, ``producers``, ``chunks`` and ``metrics``: each reads the
service through its :class:`~dispatcher.server.control_target.ControlTarget`, its counters
and its settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config import Settings
from dispatcher.schema import Outcome
from dispatcher.server.control_shapes import Listing, NextRuns, Reply, producers_reply
from dispatcher.server.control_target import ControlTarget
from dispatcher.server.log_handler import log_lines_dropped
from dispatcher.server.release import installed_version
from dispatcher.server.stats import ServiceStats

STATUS_WAITING_LIMIT: Final = 100
"""Most waiting tasks (queued, blocked, delayed) ``status`` lists under ``running``: beyond,
it lists the tasks on workers only, and ``running_omitted`` counts the others (and those
beyond :data:`~dispatcher.server.control_shapes.MAX_LISTED_BYTES`)."""

CANCELLED_OUTCOMES: Final = frozenset(
    {
        Outcome.CANCELLED,
        Outcome.TIMEOUT,
        Outcome.KILLED,
        Outcome.WORKER_LOST,
        Outcome.MEMORY_EXCEEDED,
    }
)
"""Outcomes dispatcherd would count in ``canceled_count`` (the others, in ``finished_count``)."""


class StateReplies:
    """Answers the commands that read *target* and *stats* (and *settings*) at once."""

    def __init__(
        self,
        target: ControlTarget,
        settings: Settings,
        stats: ServiceStats,
        next_runs: NextRuns | None = None,
    ) -> None:
        self._target = target
        self._settings = settings
        self._stats = stats
        self._next_runs = next_runs
        self._started = time.monotonic()

    def workers(self, data: Mapping[str, Any]) -> Reply:
        """Each worker, keyed ``worker-N``: pid, status, age, tasks finished, current task."""
        return {f"worker-{worker['worker_id']}": worker for worker in self._target.workers()}

    def main(self, data: Mapping[str, Any]) -> Reply:
        """Counters of the main process and of the pool."""
        stats = self._stats
        finished = stats.finished
        return {
            "received_count": stats.received_tasks,
            "control_count": stats.control,
            "pid": os.getpid(),
            "pool": {
                "finished_count": sum(
                    n for o, n in finished.items() if o not in CANCELLED_OUTCOMES
                ),
                "canceled_count": sum(n for o, n in finished.items() if o in CANCELLED_OUTCOMES),
                "retirement_count": stats.workers_retired,
                **self._target.pool(),
            },
            "uptime": self._uptime(),
        }

    def aio_tasks(self, data: Mapping[str, Any]) -> Reply:
        """The main process's asyncio tasks: whether each is done, and its stack."""
        return self._target.aio_tasks(data.get("limit", 6))

    def status(self, data: Mapping[str, Any]) -> Reply:
        """Every read-only command's reply, and our counters beside them.

        Also the version of dispatcher the service runs (``version``), as
        ``dispatcher-standalone --version`` says it.
        """
        stats = self._stats
        counts = self._target.counts()
        waiting = counts["queued"] + counts["blocked"] + counts["delayed"]
        limit = None if waiting <= STATUS_WAITING_LIMIT else 0
        listing = Listing()
        for where, jobs in self._target.snapshot(limit).places:  # at most 100 waiting
            for job in jobs:
                listing.add_job(where, job)
        omitted = 0 if limit is None else waiting
        return {
            "version": installed_version(),  # first: people read it at the top
            "running": listing.listed,
            "aio_tasks": self._target.aio_tasks(6),
            "workers": self.workers({}),
            "producers": self.producers({}),
            "metrics": self.metrics({}),
            "main": self.main({}),
            "chunks": self.chunks({}),
            "running_omitted": omitted + listing.omitted,
            "pid": os.getpid(),
            "uptime": self._uptime(),
            "received": stats.received_tasks,
            "received_control": stats.received_control,
            "rejected": dict(stats.rejected),
            "finished": dict(stats.finished),
            "discarded": stats.discarded,
            "log_lines_dropped": log_lines_dropped(),
            "queued": counts["queued"],
            "blocked": counts["blocked"],
            "delayed": counts["delayed"],
            "pool": {
                **counts["workers"],
                "started": stats.workers_started,
                "lost": stats.workers_lost,
            },
            "brokers": {name: health.as_reply() for name, health in sorted(stats.brokers.items())},
            "listener": {
                "connects": stats.listener_connects,
                "failures": stats.listener_failures,
                "self_checks": stats.self_checks,
            },
            **self._pg_queue_health(),
            "signatures": self._target.signatures(),
            "recent_failures": [failure.as_reply() for failure in reversed(stats.recent_failures)],
        }

    def _pg_queue_health(self) -> Reply:
        """``{"pg_queue": ...}``: its connections and claims, when the service has one."""
        if self._settings.brokers.pg_queue is None:
            return {}
        stats = self._stats
        return {
            "pg_queue": {
                "connects": stats.pg_queue_connects,
                "connect_failures": stats.pg_queue_connect_failures,
                "claim_failures": stats.pg_queue_claim_failures,
                "claiming": stats.pg_queue_failing_since is None,
                "failing_since": stats.pg_queue_failing_since,
                "last_error": stats.pg_queue_last_error,
                "last_error_time": stats.pg_queue_last_error_time,
            }
        }

    def producers(self, data: Mapping[str, Any]) -> Reply:
        """What feeds the service tasks: each broker, the schedules, on-start tasks, ``run``."""
        return producers_reply(self._settings, self._stats, self._uptime(), self._next_runs)

    def chunks(self, data: Mapping[str, Any]) -> Reply:
        """Incomplete chunked messages being assembled, and what became of the others."""
        return self._target.chunks()

    def metrics(self, data: Mapping[str, Any]) -> Reply:
        """Whether the metrics endpoint is on, and where."""
        return self._target.metrics_endpoint()

    def _uptime(self) -> float:
        return round(time.monotonic() - self._started, 3)
