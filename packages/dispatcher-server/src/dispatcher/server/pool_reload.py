"""Reloading the pool: replace every worker by one running the task modules as they are now.

A new fork server imports the modules afresh and starts a first worker (the probe); while it
loads, the old workers that become free are parked, so that no job starts on the old code.
Once the probe is ready the registered task names are refreshed and the old workers are
stopped; when the new code cannot run, nothing changes. (What triggers a reload, a change
to a task module's source, is :mod:`dispatcher.server.reload`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.fork_server_link import ForkServerLink
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.launcher import WorkerLauncher
from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.pace import TaskPace
from dispatcher.server.pool_start_backoff import STARTUP_TIMEOUT
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.stats import ServiceStats
from dispatcher.server.task_imports import ended_early
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.pool")


@dataclass(frozen=True)
class Reloaded:
    """How a reload went: workers restarted and tasks registered, or why nothing changed."""

    restarted: int = 0
    """Workers retired (each replaced by one running the new code)."""
    tasks: int = 0
    """Task names registered by the new code."""
    error: str | None = None
    """Why the new code cannot run (the old workers carry on), or ``None``."""
    shutting_down: bool = False
    """Whether it was given up because the service is stopping (not the code's fault)."""


@dataclass
class ReloadUnderWay:
    """A reload under way: the first worker of the new fork server, and the workers parked."""

    probe: WorkerHandle | None = None
    tasks: frozenset[str] = frozenset()
    details: dict[str, Any] | None = None
    """The probe's ``ready`` event: what its tasks registered (queues, timeouts...)."""
    error: str | None = None
    parked: list[WorkerHandle] = field(default_factory=list)
    """Old workers that became free: no job starts on the old code while the new loads."""


class ReloadingPool(Protocol):
    """What a reload needs of the pool (a :class:`~dispatcher.server.supervisor.Supervisor`)."""

    @property
    def workers(self) -> list[WorkerHandle]:
        """Every worker the pool has (starting, ready, busy or stopping)."""

    @property
    def closing(self) -> bool:
        """Whether the pool is shutting down."""

    def start_worker(self, link: ForkServerLink | None = None) -> WorkerHandle:
        """Start a worker from the current fork server, or from *link*."""

    def stop_worker(self, worker: WorkerHandle) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""

    def replace_recalled(self, worker: WorkerHandle) -> None:
        """Replace *worker*, which gave back the jobs it held."""

    def wake(self) -> None:
        """Have the pool looked at now."""


class Reloader:
    """Reloads the pool's workers, one reload at a time; see the module docstring."""

    def __init__(
        self,
        pool: ReloadingPool,
        launcher: WorkerLauncher,
        scheduler: Scheduler,
        catalogue: TaskCatalogue,
        stats: ServiceStats,
        pace: TaskPace,
    ) -> None:
        self._pool = pool
        self._launcher = launcher
        self._scheduler = scheduler
        self._catalogue = catalogue
        self._stats = stats
        self._pace = pace
        self.current: ReloadUnderWay | None = None
        """The reload under way, or ``None``."""

    async def reload(self) -> Reloaded:
        """Replace every worker by one running the task modules as they are now.

        A new fork server imports the modules afresh; once its first worker is ready, the
        registered task names are refreshed and every older worker is stopped (a running
        task finishes first; the jobs held ahead by a worker go back to the queue). Until
        then no job starts on an old worker. When the new code cannot be imported, nothing
        changes: the old workers carry on (those whose held jobs went back are replaced).
        """
        pool = self._pool
        if pool.closing or self.current is not None:
            return Reloaded(error="the service is shutting down, or already reloading")
        reload = self.current = ReloadUnderWay()
        for worker in pool.workers:
            worker.recall_ahead()
            if worker.is_ready:
                self._scheduler.forget(worker)
                reload.parked.append(worker)
        try:
            try:
                link = self._launcher.prepare()
            except OSError as exc:
                return Reloaded(error=f"cannot start a new fork server: {exc}")
            error = await self._start_probe(reload, link)
            if error is not None or pool.closing:
                if reload.probe is not None:
                    pool.stop_worker(reload.probe)
                self._launcher.discard(link)
                if pool.closing:
                    return Reloaded(error="the service is shutting down", shutting_down=True)
                return Reloaded(error=error)
            self._launcher.switch_to(link)
            self._warn_of_removed_tasks(reload.tasks, reload.probe)
            self._catalogue.refresh(reload.tasks, reload.details)
            self._forget_removed_tasks(reload.tasks, reload.probe)
            retired = [w for w in pool.workers if w.is_live and w is not reload.probe]
            for worker in retired:
                pool.stop_worker(worker)
            return Reloaded(restarted=len(retired), tasks=len(reload.tasks))
        finally:
            self.current = None
            for worker in reload.parked:
                if worker.is_ready and worker.recalled:  # the reload failed: replace it
                    pool.replace_recalled(worker)
                elif worker.is_ready:
                    self._scheduler.worker_free(worker)
            pool.wake()

    def _warn_of_removed_tasks(self, tasks: frozenset[str], probe: WorkerHandle | None) -> None:
        """Say which jobs not yet run name a task the reloaded code no longer registers.

        They are not dropped: each runs on a new worker and fails there as not registered
        (one running on an old worker finishes there). A task renamed by mistake can be
        renamed back before they start, or they can be cancelled (``cancel`` by task).
        """
        running = {f"worker-{w.id}" for w in self._pool.workers if w is not probe}
        waiting: dict[str, list[str]] = {}
        for where, jobs in self._scheduler.snapshot().places:
            if where in running:
                continue
            for job in jobs:
                if job.task not in tasks:
                    waiting.setdefault(job.task, []).append(job.uuid)
        for task, uuids in waiting.items():
            logger.warning(
                "reload: %d waiting tasks name %s, which the new code does not register: "
                "they will fail as not registered (uuids %s)",
                len(uuids),
                task,
                _summarise(uuids),
            )

    def _forget_removed_tasks(self, tasks: frozenset[str], probe: WorkerHandle | None) -> None:
        """Drop the counters (and pace) of the tasks the reloaded code no longer registers.

        Those of a task still running on an old worker (not *probe*, the first new one) are
        kept: its end is counted under its name (and dropped at the next reload). The jobs
        of a removed task that wait, or that new workers took, never run: each is counted
        as refused (``unknown_task``).
        """
        running = {w.job.task for w in self._pool.workers if w.job is not None and w is not probe}
        keep = tasks | running
        self._stats.forget_tasks(keep)
        self._pace.keep_only(keep)

    async def _start_probe(self, reload: ReloadUnderWay, link: ForkServerLink) -> str | None:
        """Have *link* import the modules and start a worker; ``None``, or what went wrong."""
        report: dict[str, Any] | None = None
        with anyio.move_on_after(STARTUP_TIMEOUT):
            report = await self._launcher.import_report(link)
        if report is None:
            return f"the new code took more than {STARTUP_TIMEOUT:.0f} s to import"
        if "ended" in report:
            return ended_early(report["ended"]).replace("\n", ": ", 1)
        if not report.get("ok"):
            where = f" (at {report['location']})" if report.get("location") else ""
            return f"cannot import {report.get('module')}: {report.get('error')}{where}"
        if not report.get("task_count"):
            return "tasks.modules register no task (a file saved half-way?)"
        probe = reload.probe = self._pool.start_worker(link)
        with anyio.move_on_after(STARTUP_TIMEOUT):
            await probe.started.wait()
        if probe.status in (WorkerStatus.READY, WorkerStatus.BUSY):
            return None
        if reload.error is not None:
            lines = [line for line in reload.error.splitlines() if line.strip()]
            return f"a new worker failed to start: {lines[-1] if lines else 'no error given'}"
        return "a new worker did not start"


def _summarise(uuids: list[str], shown: int = 20) -> Phrase:
    named = (Phrase("%s", uuid) for uuid in uuids[:shown])
    return Phrase.joined(", ", named, more=len(uuids) - shown)
