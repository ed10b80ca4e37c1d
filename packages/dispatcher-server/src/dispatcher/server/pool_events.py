"""What a worker's events mean for the pool: ``ready``, ``done``, ``control``, ``fatal``.

A ready worker is offered a job (unless a reload parks it); a ``done`` ends its job (the
scheduler is told, the pace of the task noted, the outcome recorded) and the worker takes
the next job, or is stopped or replaced; a bound task's ``control`` request is answered;
a ``fatal`` one stops the worker (and, from a reload's first worker, fails the reload). A
worker that writes what is not an event of its own is distrusted and stopped. One whose
task left it unfit for more (a ``done`` with ``retire``: its log or its output's pipe
closed) is replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from dispatcher.config import Pool as PoolSettings
from dispatcher.server import scaling
from dispatcher.server.accounting import Accounting
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.handle_status import LIVE, WorkerStatus
from dispatcher.server.log_arguments import Phrase
from dispatcher.server.log_handler import count_worker_lines_dropped
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import escape, first_line
from dispatcher.server.pace import TaskPace
from dispatcher.server.pool_changes import PoolChanges
from dispatcher.server.pool_reload import Reloader
from dispatcher.server.pool_start_backoff import StartBackoff
from dispatcher.server.protocol import reply_line
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.stats import ServiceStats
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.pool")

RETIRE_REASONS: Final = {
    "log": "closed or replaced the file descriptor its worker logs to",
    "output": "closed or replaced the pipe its worker captures its output with",
}
"""What a task did to its worker, by the word of a ``done`` event's ``retire``."""

ControlHandler = Callable[[str, dict[str, Any], Callable[[dict[str, Any]], None]], None]
"""Runs a bound task's control request, ``handler(command, data, answer)``: it calls
``answer(reply)`` once it has the reply (maybe later: a command may take a while)."""


class EventPool(Protocol):
    """What the events need of the pool (a :class:`~dispatcher.server.supervisor.Supervisor`)."""

    on_control: ControlHandler
    """Answers bound tasks' control requests."""

    @property
    def closing(self) -> bool:
        """Whether the pool is shutting down."""

    def stop_worker(self, worker: WorkerHandle) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""

    def replace_recalled(self, worker: WorkerHandle) -> None:
        """Replace *worker*, which gave back the jobs it held."""

    def wake(self) -> None:
        """Have the pool looked at now."""


class PoolEvents:
    """Handles the events of the pool's workers; see the module docstring."""

    def __init__(
        self,
        pool: EventPool,
        settings: PoolSettings,
        *,
        scheduler: Scheduler,
        catalogue: TaskCatalogue,
        stats: ServiceStats,
        accounting: Accounting,
        pace: TaskPace,
        backoff: StartBackoff,
        reloader: Reloader,
        changes: PoolChanges,
        internal_errors: InternalErrorLog,
        on_fatal: Callable[[dict[str, Any]], None],
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._scheduler = scheduler
        self._catalogue = catalogue
        self._stats = stats
        self._accounting = accounting
        self._pace = pace
        self._backoff = backoff
        self._reloader = reloader
        self._changes = changes
        self._internal_errors = internal_errors
        self._on_fatal = on_fatal

    def handle(self, worker: WorkerHandle, event: dict[str, Any]) -> None:
        """Act on *event*, which *worker* sent."""
        kind = event["event"]
        if kind == "done":
            if self._owns(worker, event):
                self._finished(worker, event)
        elif kind == "ready":
            self._catalogue.learn(frozenset(event["tasks"]), event)
            logger.debug("worker %d (pid %d) ready", worker.id, worker.pid)
            reload = self._reloader.current
            if reload is not None and worker is reload.probe:
                reload.tasks = frozenset(event["tasks"])
                reload.details = event
            if worker.ready():
                self._free(worker)
            self._backoff.worker_ready()
            self._pool.wake()
        elif kind == "control":
            self._pool.on_control(
                event["command"],
                event.get("data") or {},
                lambda reply: worker.reply(reply_line(reply)),
            )
        elif kind == "fatal":
            worker.stop()
            worker.started.set()
            reload = self._reloader.current
            if reload is not None and worker is reload.probe:
                reload.error = _fatal_text(event)
            else:
                self._on_fatal(event)

    def failed(self, worker: WorkerHandle, exc: Exception) -> None:
        """Handling an event of *worker* raised *exc*: it costs that event and a line."""
        self._stats.rejected["internal_error"] += 1
        self._internal_errors.report("a worker event", exc, f"worker {worker.id}")

    def garbled(self, worker: WorkerHandle, line: bytes, exc: Exception) -> None:
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

    def _finished(self, worker: WorkerHandle, event: dict[str, Any]) -> None:
        dropped = event.get("log_lines_dropped")  # (by the worker, its log's reader behind)
        if type(dropped) is int and dropped > 0:
            count_worker_lines_dropped(dropped)
        started = _seconds(event.get("started"))
        ran = event.get("run_time")  # on the monotonic clock: "finished" may be stepped
        if not isinstance(ran, int | float):
            ran = _seconds(event.get("finished")) - started
        ran = max(0.0, float(ran))
        finished = started + ran  # its end on the clock of its start
        job, outcome = worker.finish(str(event.get("outcome")))
        self._backoff.task_finished()
        unregistered = event.get("unregistered") is True  # its name is gone (a reload)
        if job is not None and not unregistered:
            self._pace.record(job.task, ran)
        # The pool's own state first: nothing below may leave a duplicate blocked or a
        # worker busy forever.
        if job is not None:
            self._scheduler.job_ended(job)
        self._scheduler.put_back(worker.take_unstarted())
        if "retire" in event:
            self._retire(worker, event, job.task if job is not None else None)
        self._after_task(worker)
        self._changes.signal()
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

    def _retire(self, worker: WorkerHandle, event: dict[str, Any], task: str | None) -> None:
        """Replace *worker*, which its task (*task*) left unfit to run more.

        It is sent nothing more, and gives back what it holds (it ends those ``recalled``).
        """
        why = RETIRE_REASONS.get(str(event["retire"]), "left its worker unfit to run more")
        logger.warning(
            "task %s (uuid %s) %s: replacing worker %d (pid %d)",
            task,
            event.get("uuid"),
            Phrase(why),
            worker.id,
            worker.pid,
        )
        worker.recalled = True
        # Stopped now; else once it has given back the jobs it holds, or it exits already
        # (its task raised DispatcherExit).
        if worker.job is None and worker.status is not WorkerStatus.STOPPING:
            self._stats.workers_retired += 1
            self._pool.stop_worker(worker)

    def _after_task(self, worker: WorkerHandle) -> None:
        """A worker's task has ended: give it the next job, or stop or replace it."""
        if worker.status is WorkerStatus.STOPPING:
            self._pool.wake()
            return
        if self._pool.closing:
            self._pool.stop_worker(worker)
            return
        if worker.recalled and worker.job is None and self._reloader.current is None:
            self._pool.replace_recalled(worker)
            return
        reason = scaling.retire_reason(worker, time.monotonic(), self._settings)
        if reason is None:
            self._free(worker)
        elif worker.job is not None:
            # It started a job it held: it is sent no more, and retires once it has run
            # those it holds (quick ones), before its replacement starts.
            self._free(worker)
        else:
            logger.info("worker %d %s: replacing it", worker.id, reason)
            self._stats.workers_retired += 1
            self._pool.stop_worker(worker)

    def _free(self, worker: WorkerHandle) -> None:
        """*worker* may take a job: give it one, unless it runs code a reload replaces."""
        reload = self._reloader.current
        if reload is None or worker is reload.probe:
            self._scheduler.worker_free(worker)
        elif worker not in reload.parked:
            reload.parked.append(worker)


def _fatal_text(event: dict[str, Any]) -> str:
    """What a worker's ``fatal`` event says, in one line: its error, and where (its report)."""
    report = event.get("report")
    if not isinstance(report, dict):
        return str(event["error"])
    where = report.get("location") or report.get("raised_in")
    at = f" (at {where})" if where else ""
    return f"cannot import {report.get('module')}: {report.get('error')}{at}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _seconds(value: object) -> float:
    """A time a worker reported; ``0.0`` if it is not a number."""
    return float(value) if isinstance(value, int | float) else 0.0
