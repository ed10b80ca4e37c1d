"""The pool of worker processes: start, replace, recycle and shut them down.

The supervisor owns the worker handles and their I/O. It starts workers through the fork
server, reads their events (``ready``, ``done``, ``control``, ``fatal``), tells the
scheduler when a worker is free or a job has ended, has outcomes recorded, follows the
scaling plan, and stops everything in order at shutdown. A worker's death is noticed at
once through its pidfd, and the worker is replaced.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dispatcher.config import Service as ServiceSettings
from dispatcher.schema import Outcome
from dispatcher.server import memory, scaling
from dispatcher.server.accounting import Accounting
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.cpus import usable_cpus
from dispatcher.server.jobs import listed
from dispatcher.server.launcher import (
    ForkServerLink,
    ForkServerReplaced,
    LaunchError,
    WorkerLauncher,
    WorkerProcess,
)
from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted, escape, first_line
from dispatcher.server.pace import TaskPace
from dispatcher.server.protocol import PIPELINE_DEPTH, reply_line
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.resources import shortage_text
from dispatcher.server.runners import Runner
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.settlement import SettleJob, settle_nothing
from dispatcher.server.stats import ServiceStats
from dispatcher.server.task_imports import ended_early
from dispatcher.server.timers import Timers
from dispatcher.server.worker_io import WorkerEvents
from dispatcher.server.workers import KILL_AFTER_TERM, LIVE, WorkerHandle, WorkerStatus

logger = get_logger("dispatcher.pool")

STARTUP_TIMEOUT: Final = 60.0
"""Seconds a new worker has to import the task modules and report ready."""

START_BACKOFF_FIRST: Final = 0.5
"""Seconds without new workers after one died before it was ready; doubled for each that
follows it in a row (a hook or an import that kills every worker must not fork them in a
tight loop)."""

START_BACKOFF_CAP: Final = 30.0
"""The longest pause between starts while workers keep dying before they are ready (or
without a task: a worker hook that ends every idle worker must not fork them in a loop
either; the first such death pauses nothing)."""

STATUS_WAIT: Final = 0.5
"""Seconds the line saying that a worker died waits for its exit status from the fork server."""

EXIT_WAIT: Final = 5.0
"""Seconds a worker asked to stop (or seen to die) has to exit before it is killed."""

ControlHandler = Callable[[str, dict[str, Any], Callable[[dict[str, Any]], None]], None]
"""Runs a bound task's control request, ``handler(command, data, answer)``: it calls
``answer(reply)`` once it has the reply (maybe later: a command may take a while)."""


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
class _Reload:
    """A reload under way: the first worker of the new fork server, and the workers parked."""

    probe: WorkerHandle | None = None
    tasks: frozenset[str] = frozenset()
    details: dict[str, Any] | None = None
    """The probe's ``ready`` event: what its tasks registered (queues, timeouts...)."""
    error: str | None = None
    parked: list[WorkerHandle] = field(default_factory=list)
    """Old workers that became free: no job starts on the old code while the new loads."""


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
        self._catalogue = catalogue
        self._stats = stats
        self._accounting = Accounting(stats, settle, settings.task_log)
        self._on_fatal = on_fatal
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
        self._changed: anyio.Event | None = None
        """Set when a worker finishes a task or goes away, while someone waits for that."""
        self._task_group: TaskGroup | None = None
        self._reloading: _Reload | None = None
        self._failed_starts = 0
        """Workers that died before they were ready, in a row."""
        self._idle_deaths = 0
        """Workers that died without a task, in a row (no task finished in between)."""
        self._starts_paused_until = 0.0
        """No worker is started before this (monotonic) time: see START_BACKOFF_FIRST."""
        self._ends: dict[int, Callable[[str], None]] = {}
        """What to log and record of a worker that ended, once its exit status is known."""
        self._statuses: dict[int, int] = {}
        """The exit statuses the fork server reported, by worker id (until it is forgotten)."""
        self._status_came = anyio.Event()

    @property
    def workers(self) -> list[WorkerHandle]:
        """Every worker the pool has (starting, ready, busy or stopping)."""
        return list(self._workers.values())

    @property
    def next_worker_id(self) -> int:
        """The id the next worker started will have."""
        return self._next_id

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
                self._start_worker()
            task_status.started()
            while True:
                with anyio.move_on_after(1.0):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()
                if not self._closing and self._reloading is None:
                    self._manage(time.monotonic())

    def _manage(self, now: float) -> None:
        plan = scaling.plan(
            now, self.workers, self._scheduler.queued, self.settings, self.max_workers
        )
        for worker_id in plan.stop:
            worker = self._workers[worker_id]
            logger.debug("worker %d: stopping it (idle, or past its lifetime)", worker_id)
            self._stop(worker)
        if now < self._starts_paused_until:
            return  # the next look, within a second, starts what is missing
        # While starts fail, one worker at a time: the rest once one of them is ready.
        for _ in range(min(plan.start, 1) if self._failed_starts else plan.start):
            self._start_worker()

    # -- a worker's life -------------------------------------------------------------------

    def _start_worker(self, link: ForkServerLink | None = None) -> WorkerHandle:
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
            self._launch_failed(worker, exc)
            return
        self._stats.workers_started += 1
        worker.attach(process)
        events = WorkerEvents(
            process,
            on_event=lambda event: self._handle_event(worker, event),
            on_end=lambda: self._lost(worker, process),
            on_error=lambda exc: self._event_failed(worker, exc),
            on_garbled=lambda line, exc: self._garbled(worker, line, exc),
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

    def _launch_failed(self, worker: WorkerHandle, exc: Exception) -> None:
        """*worker* could not be started: pause the starts, as for a worker dying unready.

        Workers started together fail together: the first of them to fail says why (at
        ERROR) and pauses the starts; the others, failing within that pause, at DEBUG.
        """
        if isinstance(exc, ForkServerReplaced):  # (said as the fork server was killed)
            logger.info("worker %d was not started: %s; it starts from a new one", worker.id, exc)
            self._wakeup.set()
            return
        reason = shortage_text(exc) or str(exc)
        if time.monotonic() < self._starts_paused_until:
            logger.debug("could not start worker %d either: %s", worker.id, reason)
        else:
            self._failed_starts += 1
            pause = self._pause_starts(START_BACKOFF_FIRST * 2 ** (self._failed_starts - 1))
            logger.error(
                "could not start worker %d: %s (%s in a row); starting the next one in %.1f s",
                worker.id,
                reason,
                counted(self._failed_starts, "failed start"),
                pause,
            )
        self._wakeup.set()

    def _garbled(self, worker: WorkerHandle, line: bytes, exc: Exception) -> None:
        """The worker wrote what is not an event: its task wrote on the event pipe."""
        logger.warning(
            "worker %d (pid %d) wrote %s on its event pipe, not an event (%s): stopping it",
            worker.id,
            worker.pid,
            escape(line, 80),
            first_line(exc),
        )
        worker.kill()

    def _owns(self, worker: WorkerHandle, event: dict[str, Any]) -> bool:
        """Whether a ``done`` event of *worker* is for the job it runs.

        Otherwise its task forged it (writing on the event pipe, or from a process it
        forked, which may also read the jobs sent to the worker): as for garbled lines,
        nothing more it sends can be trusted (a ``done`` of its own job that follows is
        ignored too), and it is stopped (its job ends ``worker_lost``). A worker being
        stopped may still report the job it was taken. A guard against accidents, not
        against a task bent on it: one that knows its job's uuid can report its end.
        """
        if worker.distrusted:
            return False
        job, uuid = worker.job, event.get("uuid")
        if job is None and worker.status not in LIVE:
            return True
        if job is not None and uuid == job.uuid:
            return True
        running = "no job" if job is None else f"the job of uuid {job.uuid}"
        logger.warning(
            "worker %d (pid %d) reported the end of uuid %s while it runs %s: not an event "
            "of its own (its task forged it), stopping it",
            worker.id,
            worker.pid,
            uuid,
            running,
        )
        worker.distrusted = True
        worker.kill()
        return False

    def _event_failed(self, worker: WorkerHandle, exc: Exception) -> None:
        self._stats.rejected["internal_error"] += 1
        self._internal_errors.report("a worker event", exc, f"worker {worker.id}")

    def _handle_event(self, worker: WorkerHandle, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "done":
            if self._owns(worker, event):
                self._finished(worker, event)
        elif kind == "ready":
            self._catalogue.learn(frozenset(event["tasks"]), event)
            logger.debug("worker %d (pid %d) ready", worker.id, worker.pid)
            reload = self._reloading
            if reload is not None and worker is reload.probe:
                reload.tasks = frozenset(event["tasks"])
                reload.details = event
            if worker.ready():
                self._free(worker)
            self._failed_starts, self._starts_paused_until = 0, 0.0
            self._wakeup.set()
        elif kind == "control":
            self.on_control(
                event["command"],
                event.get("data") or {},
                lambda reply: worker.reply(reply_line(reply)),
            )
        elif kind == "fatal":
            worker.stop()
            worker.started.set()
            reload = self._reloading
            if reload is not None and worker is reload.probe:
                reload.error = _fatal_text(event)
            else:
                self._on_fatal(event)

    def _finished(self, worker: WorkerHandle, event: dict[str, Any]) -> None:
        started = _seconds(event.get("started"))
        ran = event.get("run_time")  # on the monotonic clock: "finished" may be stepped
        if not isinstance(ran, int | float):
            ran = _seconds(event.get("finished")) - started
        ran = max(0.0, float(ran))
        finished = started + ran  # its end on the clock of its start
        job, outcome = worker.finish(str(event.get("outcome")))
        self._idle_deaths = 0  # workers run tasks: one that dies idle is replaced at once
        unregistered = event.get("unregistered") is True  # its name is gone (a reload)
        if job is not None and not unregistered:
            self._pace.record(job.task, ran)
        # The pool's own state first: nothing below may leave a duplicate blocked or a
        # worker busy forever.
        if job is not None:
            self._scheduler.job_ended(job)
        self._scheduler.put_back(worker.take_unstarted())
        self._after_task(worker)
        self._signal_change()
        if job is not None:
            self._accounting.finished(
                job,
                outcome,
                worker.id,
                started,
                finished,
                event.get("error"),
                str(event.get("traceback", "")),
                _text(event.get("result")),
                _text(event.get("result_note")),
                event.get("final") is True,
                unregistered,
            )

    def _after_task(self, worker: WorkerHandle) -> None:
        """A worker's task has ended: give it the next job, or stop or replace it."""
        if worker.status is WorkerStatus.STOPPING:
            self._wakeup.set()
            return
        if self._closing:
            self._stop(worker)
            return
        if worker.recalled and worker.job is None and self._reloading is None:
            self._replace_recalled(worker)
            return
        reason = scaling.retire_reason(worker, time.monotonic(), self.settings)
        if reason is None:
            self._free(worker)
        elif worker.job is not None:
            # It started a job it held: it is sent no more, and retires once it has run
            # those it holds (quick ones), before its replacement starts.
            self._free(worker)
        else:
            logger.info("worker %d %s: replacing it", worker.id, reason)
            self._stats.workers_retired += 1
            self._stop(worker)

    def _replace_recalled(self, worker: WorkerHandle) -> None:
        """*worker* gave back the jobs it held: it would give back any job sent to it now."""
        logger.info("worker %d gave back the jobs it held: replacing it", worker.id)
        self._stats.workers_retired += 1
        self._stop(worker)

    def _free(self, worker: WorkerHandle) -> None:
        """*worker* may take a job: give it one, unless it runs code a reload replaces."""
        reload = self._reloading
        if reload is None or worker is reload.probe:
            self._scheduler.worker_free(worker)
        elif worker not in reload.parked:
            reload.parked.append(worker)

    def _ahead_allowed(self, runner: Runner) -> int:
        """How many jobs in all busy *runner* may hold ahead.

        Only behind a quick task, and no more than it runs before it retires (after
        ``max_tasks_per_worker`` tasks, or once past its lifetime: none then).
        """
        worker = self._workers.get(runner.id)
        if self._reloading is not None:
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

    def _stop(self, worker: WorkerHandle) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""
        self._scheduler.forget(worker)
        worker.stop()
        self._wakeup.set()

    def _lost(self, worker: WorkerHandle, process: WorkerProcess) -> None:
        """The worker's process ended (or its socket closed): it exited, or died.

        The pool's state changes now (a replacement starts at once); what is logged and
        recorded about an unexpected end waits for its exit status (see :meth:`_reap`).
        """
        starting = worker.status is WorkerStatus.STARTING
        # The service killed it with its fork server, or that ended: not its own doing.
        gone_with = process.ended_with_fork_server()
        started, ended = _run_span(worker)
        job, outcome, expected = worker.exited()
        self._scheduler.forget(worker)
        if job is not None:
            self._scheduler.job_ended(job)
        again, cancelled = worker.take_ahead()
        self._scheduler.put_back(worker.take_unstarted() + again)
        now = time.time()
        for held, held_outcome in cancelled:  # cancelled while held: they end so, not run
            self._scheduler.job_ended(held)
            self._accounting.finished(held, held_outcome, worker.id, None, now)
        if not expected:
            self._stats.workers_lost += 1
        unexpected = not expected and not self._closing
        pause = None
        if gone_with is not None:
            pass  # (no pause: the next worker comes from a new fork server)
        elif unexpected and starting:
            self._failed_starts += 1
            pause = self._pause_starts(START_BACKOFF_FIRST * 2 ** (self._failed_starts - 1))
        elif unexpected and job is None:
            self._idle_deaths += 1
            if self._idle_deaths > 1:
                pause = self._pause_starts(START_BACKOFF_FIRST * 2 ** (self._idle_deaths - 2))
        self._signal_change()
        self._wakeup.set()  # the manager replaces it if needed
        if job is not None and outcome is not None:
            self._accounting.lost(job, outcome, worker.id, worker.pid, started, ended)
            if outcome is Outcome.WORKER_LOST:
                lost = job
                self._ends[worker.id] = lambda how: self._accounting.log_lost(
                    lost, worker.id, worker.pid, _with_cause(how, gone_with)
                )
        elif unexpected and gone_with is not None:
            self._ends[worker.id] = lambda how: self._log_gone_with(worker, how, gone_with)
        elif unexpected:
            self._ends[worker.id] = lambda how: self._log_end(worker, starting, pause, how)

    def _pause_starts(self, pause: float) -> float:
        """Start no worker for *pause* seconds (at most ``START_BACKOFF_CAP``); the pause."""
        pause = min(pause, START_BACKOFF_CAP)
        self._starts_paused_until = time.monotonic() + pause
        return pause

    def _log_end(self, worker: WorkerHandle, starting: bool, pause: float | None, how: str) -> None:
        """Log the unexpected end of *worker*, which ran no task.

        *pause*: the seconds without starts it caused; *how*: its exit status, if known.
        """
        if starting:
            logger.error(
                "worker %d (pid %s) died before it was ready (%s%s in a row; see its own lines "
                "above for why: the task modules, the worker hooks?): starting the next one in "
                "%.1f s",
                worker.id,
                worker.pid,
                f"{how}; " if how else "",
                counted(self._failed_starts, "worker"),
                pause,
            )
        elif pause is not None:
            logger.error(
                "worker %d (pid %s) exited unexpectedly without a task (%s%s in a row; see its "
                "own lines above for why: a worker hook, on_idle?): starting the next one in "
                "%.1f s",
                worker.id,
                worker.pid,
                f"{how}; " if how else "",
                counted(self._idle_deaths, "worker"),
                pause,
            )
        else:
            logger.warning(
                "worker %d (pid %s) exited unexpectedly%s",
                worker.id,
                worker.pid,
                f" ({how})" if how else "",
            )

    @staticmethod
    def _log_gone_with(worker: WorkerHandle, how: str, why: str) -> None:
        """Log that *worker*, which ran no task, ended with its fork server, for *why*."""
        logger.warning(
            "worker %d (pid %s) ended with its fork server%s: %s",
            worker.id,
            worker.pid,
            f" ({how})" if how else "",
            why,
        )

    def worker_exited(self, pid: int, status: int) -> None:
        """The fork server reaped worker *pid* with *status* (negative: killed by a signal)."""
        for worker in self._workers.values():
            if worker.pid == pid:
                self._statuses[worker.id] = status
                self._status_came.set()
                self._status_came = anyio.Event()
                return

    async def _exit_status(self, worker: WorkerHandle) -> str:
        """How *worker*'s process ended, as the fork server reports it (``exit status 7``).

        Waits up to ``STATUS_WAIT`` for the report; ``""`` without one.
        """
        with anyio.move_on_after(STATUS_WAIT):
            while worker.id not in self._statuses:
                await self._status_came.wait()
        status = self._statuses.get(worker.id)
        if status is None:
            return ""
        if status < 0:
            return f"killed by {_signal_name(-status)}"
        return f"exit status {status}"

    async def _reap(self, worker: WorkerHandle, process: WorkerProcess) -> None:
        """Wait for the process to end (killing it if it lingers) and forget the worker."""
        if worker.status is not WorkerStatus.EXITED:
            worker.kill()
            self._lost(worker, process)
        if not await process.wait(EXIT_WAIT):
            logger.warning("worker %d (pid %s) did not exit: killing it", worker.id, worker.pid)
            process.kill()
            await process.wait()
        process.close()
        end = self._ends.pop(worker.id, None)
        if end is not None:
            how = await self._exit_status(worker)
            try:
                end(how)
            except Exception as exc:  # costs this line, never the pool
                self._internal_errors.report("a worker's end", exc, f"worker {worker.id}")
        self._forget(worker)

    def _forget(self, worker: WorkerHandle) -> None:
        self._workers.pop(worker.id, None)
        self._statuses.pop(worker.id, None)
        self._scheduler.forget(worker)
        self._signal_change()

    # -- reloading -----------------------------------------------------------------------

    async def reload(self) -> Reloaded:
        """Replace every worker by one running the task modules as they are now.

        A new fork server imports the modules afresh; once its first worker is ready, the
        registered task names are refreshed and every older worker is stopped (a running
        task finishes first; the jobs held ahead by a worker go back to the queue). Until
        then no job starts on an old worker. When the new code cannot be imported, nothing
        changes: the old workers carry on (those whose held jobs went back are replaced).
        """
        if self._closing or self._reloading is not None:
            return Reloaded(error="the service is shutting down, or already reloading")
        reload = self._reloading = _Reload()
        for worker in self.workers:
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
            if error is not None or self._closing:
                if reload.probe is not None:
                    self._stop(reload.probe)
                self._launcher.discard(link)
                if self._closing:
                    return Reloaded(error="the service is shutting down", shutting_down=True)
                return Reloaded(error=error)
            self._launcher.switch_to(link)
            self._warn_of_removed_tasks(reload.tasks, reload.probe)
            self._catalogue.refresh(reload.tasks, reload.details)
            self._forget_removed_tasks(reload.tasks, reload.probe)
            retired = [w for w in self.workers if w.is_live and w is not reload.probe]
            for worker in retired:
                self._stop(worker)
            return Reloaded(restarted=len(retired), tasks=len(reload.tasks))
        finally:
            self._reloading = None
            for worker in reload.parked:
                if worker.is_ready and worker.recalled:  # the reload failed: replace it
                    self._replace_recalled(worker)
                elif worker.is_ready:
                    self._scheduler.worker_free(worker)
            self._wakeup.set()

    def _warn_of_removed_tasks(self, tasks: frozenset[str], probe: WorkerHandle | None) -> None:
        """Say which jobs not yet run name a task the reloaded code no longer registers.

        They are not dropped: each runs on a new worker and fails there as not registered
        (one running on an old worker finishes there). A task renamed by mistake can be
        renamed back before they start, or they can be cancelled (``cancel`` by task).
        """
        running = {f"worker-{w.id}" for w in self.workers if w is not probe}
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
        running = {w.job.task for w in self.workers if w.job is not None and w is not probe}
        keep = tasks | running
        self._stats.forget_tasks(keep)
        self._pace.keep_only(keep)

    async def _start_probe(self, reload: _Reload, link: ForkServerLink) -> str | None:
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
        probe = reload.probe = self._start_worker(link)
        with anyio.move_on_after(STARTUP_TIMEOUT):
            await probe.started.wait()
        if probe.status in (WorkerStatus.READY, WorkerStatus.BUSY):
            return None
        if reload.error is not None:
            lines = [line for line in reload.error.splitlines() if line.strip()]
            return f"a new worker failed to start: {lines[-1] if lines else 'no error given'}"
        return "a new worker did not start"

    # -- shutting down -------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop every worker: idle ones at once, busy ones after their task or *grace* s."""
        self._closing = True
        for where, jobs in self._scheduler.close():
            # A job with a receipt goes back to its broker (a durable queue): not lost.
            lost = [job for job in jobs if job.receipt is None]
            back = [job for job in jobs if job.receipt is not None]
            if lost:
                logger.warning(
                    "shutting down with %s abandoned: %s",
                    counted(len(lost), f"{where} task"),
                    listed(lost),
                )
            if back:
                logger.info(
                    "shutting down: %d %s tasks handed back to their durable queue, to run "
                    "elsewhere or after the restart: %s",
                    len(back),
                    where,
                    listed(back),
                )
        for worker in self.workers:
            if worker.status is not WorkerStatus.BUSY:
                self._stop(worker)
        busy = [w for w in self.workers if w.status is WorkerStatus.BUSY]
        if busy:
            running = counted(len(busy), "running task")
            logger.info("waiting up to %.0f s for %s to finish", grace, running)
        with anyio.move_on_after(grace):
            await self._wait_until(
                lambda: not any(w.status is WorkerStatus.BUSY for w in self.workers)
            )
        terminated = [w for w in self.workers if w.status is WorkerStatus.BUSY]
        for worker in terminated:
            started, ended = _run_span(worker)
            job = worker.terminate()
            if job is not None:
                self._accounting.abandoned(job, grace, worker.id, started, ended)
        if terminated:
            with anyio.move_on_after(KILL_AFTER_TERM):
                await self._wait_until(
                    lambda: all(w.status is WorkerStatus.EXITED for w in terminated)
                )
            for worker in terminated:
                if worker.status is not WorkerStatus.EXITED:
                    logger.warning(
                        "worker %d (pid %s) still running %g s after SIGTERM: killing it",
                        worker.id,
                        worker.pid,
                        KILL_AFTER_TERM,
                    )
                    worker.kill()
        with anyio.move_on_after(EXIT_WAIT * 2):
            await self._wait_until(lambda: not self._workers)
        for worker in self.workers:
            worker.kill()
        with anyio.move_on_after(EXIT_WAIT):
            await self._wait_until(lambda: not self._workers)

    def _signal_change(self) -> None:
        if self._changed is not None:  # only shutdown waits for it: keep the hot path cheap
            self._changed.set()
            self._changed = None

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def kill_all(self) -> None:
        """Kill every worker process now (for a forced exit)."""
        for worker in self.workers:
            worker.kill()
        self._launcher.close()


def _fatal_text(event: dict[str, Any]) -> str:
    """What a worker's ``fatal`` event says, in one line: its error, and where (its report)."""
    report = event.get("report")
    if not isinstance(report, dict):
        return str(event["error"])
    where = report.get("location") or report.get("raised_in")
    at = f" (at {where})" if where else ""
    return f"cannot import {report.get('module')}: {report.get('error')}{at}"


def _with_cause(how: str, cause: str | None) -> str:
    """How a worker ended (``killed by SIGKILL``), and why, when known."""
    if cause is None:
        return how
    return f"{how}: {cause}" if how else cause


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _run_span(worker: WorkerHandle) -> tuple[float, float]:
    """When *worker*'s running job started, and now, in seconds since the epoch.

    As workers report them: the wall clock now, and the start that many seconds before as
    the monotonic clock measured them (a step of the wall clock meanwhile changes neither
    its run time nor its sign).
    """
    now = time.time()
    return now - max(0.0, time.monotonic() - worker.job_since), now


def _seconds(value: object) -> float:
    """A time a worker reported; ``0.0`` if it is not a number."""
    return float(value) if isinstance(value, int | float) else 0.0


def _summarise(uuids: list[str], shown: int = 20) -> Phrase:
    named = (Phrase("%s", uuid) for uuid in uuids[:shown])
    return Phrase.joined(", ", named, more=len(uuids) - shown)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
