"""The pool of worker processes: start, replace, recycle and shut them down.

The supervisor owns the worker handles and their I/O. It starts workers through the fork
server, has their events (``ready``, ``done``, ``control``, ``fatal``) handled
(:mod:`~dispatcher.server.pool_events`), follows the scaling plan, pacing the starts while
workers die unready (:mod:`~dispatcher.server.pool_start_backoff`), reloads the task code
(:mod:`~dispatcher.server.pool_reload`), and stops everything in order at shutdown
(:mod:`~dispatcher.server.pool_shutdown`). A worker's death is noticed at once through its
pidfd (:mod:`~dispatcher.server.pool_worker_exits`), and the worker is replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dispatcher.config import Service as ServiceSettings
from dispatcher.server import memory, scaling
from dispatcher.server.accounting import Accounting
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.cpus import usable_cpus
from dispatcher.server.fork_server_link import ForkServerLink
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.launch_errors import LaunchError
from dispatcher.server.launched_process import WorkerProcess
from dispatcher.server.launcher import WorkerLauncher
from dispatcher.server.log_records import get_logger
from dispatcher.server.pace import TaskPace
from dispatcher.server.pool_changes import PoolChanges
from dispatcher.server.pool_events import ControlHandler, PoolEvents
from dispatcher.server.pool_reload import Reloaded, Reloader
from dispatcher.server.pool_shutdown import shut_down
from dispatcher.server.pool_start_backoff import STARTUP_TIMEOUT, StartBackoff
from dispatcher.server.pool_worker_exits import EXIT_WAIT, WorkerEnds
from dispatcher.server.protocol import PIPELINE_DEPTH
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.runners import Runner
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.settlement import SettleJob, settle_nothing
from dispatcher.server.stats import ServiceStats
from dispatcher.server.timers import Timers
from dispatcher.server.worker_io import WorkerEvents
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.pool")


class Supervisor:
    """Keeps the pool of worker processes in shape; see the module docstring."""

    def __init__(
        self,
        settings: ServiceSettings,
        launcher: WorkerLauncher,
        timers: Timers,
        scheduler: Scheduler,
        catalogue: TaskCatalogue,
        stats: ServiceStats,
        on_fatal: Callable[[dict[str, Any]], None],
        max_memory: int | None = None,
        settle: SettleJob = settle_nothing,
    ) -> None:
        self.settings = settings.pool
        self.min_workers = self.settings.min_workers
        self.max_workers = self.settings.max_workers or usable_cpus()
        self.on_control: ControlHandler = lambda command, data, answer: answer(
            {"error": "no control here"}
        )
        """Answers bound tasks' control requests (set by the service)."""
        self._cancel_grace = settings.cancel_grace
        self._launcher = launcher
        self._timers = timers
        self._scheduler = scheduler
        self._stats = stats
        self._accounting = Accounting(stats, settle, settings.task_log)
        self._max_memory = max_memory
        self._internal_errors = InternalErrorLog(logger)
        self._pace = TaskPace(self.settings.hold_ahead_below)
        scheduler.ahead_allowed = self._ahead_allowed
        scheduler.is_quick = lambda job: self._pace.is_quick(job.task)
        # Behind a quick task, and a few more of them at most.
        scheduler.ahead_wait = (PIPELINE_DEPTH + 1) * self.settings.hold_ahead_below
        self._workers: dict[int, WorkerHandle] = {}
        self._next_id = 0
        self._closing = False
        self._wakeup = anyio.Event()
        """Set to make the manager look at the pool now rather than at its next tick."""
        self._changes = PoolChanges()
        self._task_group: TaskGroup | None = None
        self._backoff = StartBackoff()
        self._reloader = Reloader(self, launcher, scheduler, catalogue, stats, self._pace)
        self._events = PoolEvents(
            self,
            self.settings,
            scheduler=scheduler,
            catalogue=catalogue,
            stats=stats,
            accounting=self._accounting,
            pace=self._pace,
            backoff=self._backoff,
            reloader=self._reloader,
            changes=self._changes,
            internal_errors=self._internal_errors,
            on_fatal=on_fatal,
        )
        self._ends = WorkerEnds(
            self,
            scheduler=scheduler,
            stats=stats,
            accounting=self._accounting,
            backoff=self._backoff,
            changes=self._changes,
            internal_errors=self._internal_errors,
        )

    @property
    def workers(self) -> list[WorkerHandle]:
        """Every worker the pool has (starting, ready, busy or stopping)."""
        return list(self._workers.values())

    @property
    def next_worker_id(self) -> int:
        """The id the next worker started will have."""
        return self._next_id

    @property
    def closing(self) -> bool:
        """Whether the pool is shutting down (no worker is started or given a job)."""
        return self._closing

    def wake(self) -> None:
        """Have the pool looked at now (a backlog started)."""
        self._wakeup.set()

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start ``min_workers`` workers, then keep the pool in shape until cancelled."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            self._launcher.start()
            task_group.start_soon(self._timers.run, name="timers")
            if self._max_memory is not None:
                task_group.start_soon(
                    memory.watch, self._workers.values, self._max_memory, name="memory-watch"
                )
            for _ in range(self.min_workers):
                self.start_worker()
            task_status.started()
            while True:
                with anyio.move_on_after(1.0):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
                if not self._closing and self._reloader.current is None:
                    self._manage(time.monotonic())

    def _manage(self, now: float) -> None:
        plan = scaling.plan(
            now, self.workers, self._scheduler.queued, self.settings, self.max_workers
        )
        for worker_id in plan.stop:
            worker = self._workers[worker_id]
            logger.debug("worker %d: stopping it (idle, or past its lifetime)", worker_id)
            self.stop_worker(worker)
        if now < self._backoff.paused_until:
            return  # the next look, within a second, starts what is missing
        # While starts fail, one worker at a time: the rest once one of them is ready.
        for _ in range(min(plan.start, 1) if self._backoff.failed_starts else plan.start):
            self.start_worker()

    # -- a worker's life -------------------------------------------------------------------

    def start_worker(self, link: ForkServerLink | None = None) -> WorkerHandle:
        """Start a worker from the current fork server, or from *link*."""
        assert self._task_group is not None
        accounting = self._accounting
        worker = WorkerHandle(
            self._next_id,
            self._timers,
            self._cancel_grace,
            on_backlog=self._flush_later,
            on_start=accounting.started if accounting.logs_starts else None,
        )
        self._next_id += 1
        self._workers[worker.id] = worker
        self._task_group.start_soon(self._worker_life, worker, link, name=f"worker-{worker.id}")
        return worker

    def _flush_later(self, worker: WorkerHandle) -> None:
        assert self._task_group is not None
        assert worker.process is not None
        self._task_group.start_soon(worker.process.flush, name=f"worker-{worker.id}-writer")

    async def _worker_life(self, worker: WorkerHandle, link: ForkServerLink | None) -> None:
        try:
            if link is None:
                process = await self._launcher.launch(worker.id)
            else:
                process = await self._launcher.launch(worker.id, link)
        except (LaunchError, OSError) as exc:
            worker.started.set()  # it never will
            self._forget(worker)
            self._backoff.launch_failed(worker.id, exc)
            self._wakeup.set()
            return
        self._stats.workers_started += 1
        worker.attach(process)
        handled = self._events
        events = WorkerEvents(
            process,
            on_event=lambda event: handled.handle(worker, event),
            on_end=lambda: self._ends.lost(worker, process),
            on_error=lambda exc: handled.failed(worker, exc),
            on_garbled=lambda line, exc: handled.garbled(worker, line, exc),
        )
        events.start()
        try:
            with anyio.move_on_after(STARTUP_TIMEOUT):
                await worker.started.wait()
            if worker.status is WorkerStatus.STARTING:
                logger.error(
                    "worker %d did not start within %.0f s: killing it", worker.id, STARTUP_TIMEOUT
                )
            else:
                await worker.gone.wait()
        finally:
            events.stop()
            with anyio.CancelScope(shield=True):
                await self._reap(worker, process)

    def replace_recalled(self, worker: WorkerHandle) -> None:
        """*worker* gave back the jobs it held: it would give back any job sent to it now."""
        logger.info("worker %d gave back the jobs it held: replacing it", worker.id)
        self._stats.workers_retired += 1
        self.stop_worker(worker)

    def _ahead_allowed(self, runner: Runner) -> int:
        """How many jobs in all busy *runner* may hold ahead.

        Only behind a quick task, and no more than it runs before it retires (after
        ``max_tasks_per_worker`` tasks, or once past its lifetime: none then).
        """
        worker = self._workers.get(runner.id)
        if self._reloader.current is not None:
            return 0
        job = None if worker is None else worker.job
        if worker is None or job is None or not self._pace.is_quick(job.task):
            return 0
        if scaling.past_lifetime(worker, time.monotonic(), self.settings):
            return 0
        limit = self.settings.max_tasks_per_worker
        if limit is None:
            return PIPELINE_DEPTH
        return max(0, min(PIPELINE_DEPTH, limit - worker.tasks_done - 1))

    def stop_worker(self, worker: WorkerHandle) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""
        self._scheduler.forget(worker)
        worker.stop()
        self._wakeup.set()

    def worker_exited(self, pid: int, status: int) -> None:
        """The fork server reaped worker *pid* with *status* (negative: killed by a signal)."""
        for worker in self._workers.values():
            if worker.pid == pid:
                self._ends.exit_status(worker.id, status)
                return

    async def _reap(self, worker: WorkerHandle, process: WorkerProcess) -> None:
        """Wait for the process to end (killing it if it lingers) and forget the worker."""
        if worker.status is not WorkerStatus.EXITED:
            worker.kill()
            self._ends.lost(worker, process)
        if not await process.wait(EXIT_WAIT):
            logger.warning("worker %d (pid %s) did not exit: killing it", worker.id, worker.pid)
            process.kill()
            await process.wait()
        process.close()
        await self._ends.report(worker)
        self._forget(worker)

    def _forget(self, worker: WorkerHandle) -> None:
        self._workers.pop(worker.id, None)
        self._ends.forget(worker.id)
        self._scheduler.forget(worker)
        self._changes.signal()

    # -- reloading and shutting down ---------------------------------------------------------

    async def reload(self) -> Reloaded:
        """Replace every worker by one running the task modules as they are now.

        See :meth:`Reloader.reload <dispatcher.server.pool_reload.Reloader.reload>`.
        """
        return await self._reloader.reload()

    async def shutdown(self, grace: float) -> None:
        """Stop every worker: idle ones at once, busy ones after their task or *grace* s."""
        self._closing = True
        await shut_down(self, self._scheduler, self._accounting, self._changes, grace)

    def kill_all(self) -> None:
        """Kill every worker process now (for a forced exit)."""
        for worker in self.workers:
            worker.kill()
        self._launcher.close()
