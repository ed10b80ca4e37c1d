"""What follows the end of a worker's process, at once and once its exit status is known.

The pool's state changes at once (its jobs go back or end, the starts may pause, a
replacement starts); what is logged and recorded of an unexpected end waits a moment for
its exit status, which the fork server reports as it reaps the workers (``killed by
SIGKILL``, ``exit status 7``). A worker asked to stop (or seen to die) has ``EXIT_WAIT``
seconds to exit.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Final, Protocol

import anyio

from dispatcher.schema import Outcome
from dispatcher.server.accounting import Accounting
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.launched_process import WorkerProcess
from dispatcher.server.log_records import get_logger
from dispatcher.server.pool_changes import PoolChanges
from dispatcher.server.pool_start_backoff import StartBackoff
from dispatcher.server.ratelimit import InternalErrorLog
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.stats import ServiceStats
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.pool")

STATUS_WAIT: Final = 0.5
"""Seconds the line saying that a worker died waits for its exit status from the fork server."""

EXIT_WAIT: Final = 5.0
"""Seconds a worker asked to stop (or seen to die) has to exit before it is killed."""


class EndingPool(Protocol):
    """What the ends need of the pool (a :class:`~dispatcher.server.supervisor.Supervisor`)."""

    @property
    def closing(self) -> bool:
        """Whether the pool is shutting down."""

    def wake(self) -> None:
        """Have the pool looked at now."""


class WorkerEnds:
    """Acts on the end of the pool's worker processes; see the module docstring."""

    def __init__(
        self,
        pool: EndingPool,
        *,
        scheduler: Scheduler,
        stats: ServiceStats,
        accounting: Accounting,
        backoff: StartBackoff,
        changes: PoolChanges,
        internal_errors: InternalErrorLog,
    ) -> None:
        self._pool = pool
        self._scheduler = scheduler
        self._stats = stats
        self._accounting = accounting
        self._backoff = backoff
        self._changes = changes
        self._internal_errors = internal_errors
        self._ends: dict[int, Callable[[str], None]] = {}
        """What to log and record of a worker that ended, once its exit status is known."""
        self._statuses = ExitStatuses()

    def lost(self, worker: WorkerHandle, process: WorkerProcess) -> None:
        """The worker's process ended (or its socket closed): it exited, or died.

        The pool's state changes now (a replacement starts at once); what is logged and
        recorded about an unexpected end waits for its exit status (see :meth:`report`).
        """
        starting = worker.status is WorkerStatus.STARTING
        # The service killed it with its fork server, or that ended: not its own doing.
        gone_with = process.ended_with_fork_server()
        started, ended = run_span(worker)
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
        unexpected = not expected and not self._pool.closing
        pause = None
        if gone_with is not None:
            pass  # (no pause: the next worker comes from a new fork server)
        elif unexpected and starting:
            pause = self._backoff.died_starting()
        elif unexpected and job is None:
            pause = self._backoff.died_idle()
        self._changes.signal()
        self._pool.wake()  # the manager replaces it if needed
        if job is not None and outcome is not None:
            self._accounting.lost(job, outcome, worker.id, worker.pid, started, ended)
            if outcome is Outcome.WORKER_LOST:
                lost = job
                self._ends[worker.id] = lambda how: self._accounting.log_lost(
                    lost, worker.id, worker.pid, _with_cause(how, gone_with)
                )
        elif unexpected and gone_with is not None:
            self._ends[worker.id] = lambda how: _log_gone_with(worker, how, gone_with)
        elif unexpected:
            self._ends[worker.id] = lambda how: self._backoff.log_end(worker, starting, pause, how)

    def exit_status(self, worker_id: int, status: int) -> None:
        """The fork server reaped worker *worker_id* with *status* (negative: a signal)."""
        self._statuses.note(worker_id, status)

    async def report(self, worker: WorkerHandle) -> None:
        """Log and record what is left to say of *worker*'s end, with its exit status."""
        end = self._ends.pop(worker.id, None)
        if end is not None:
            how = await self._statuses.describe(worker.id)
            try:
                end(how)
            except Exception as exc:  # costs this line, never the pool
                self._internal_errors.report("a worker's end", exc, f"worker {worker.id}")

    def forget(self, worker_id: int) -> None:
        """Drop what is known of worker *worker_id* (it is gone from the pool)."""
        self._statuses.forget(worker_id)


class ExitStatuses:
    """The exit statuses the fork server reported, by worker id (until each is forgotten)."""

    def __init__(self) -> None:
        self._statuses: dict[int, int] = {}
        self._came = anyio.Event()

    def note(self, worker_id: int, status: int) -> None:
        """Worker *worker_id* was reaped with *status* (negative: killed by a signal)."""
        self._statuses[worker_id] = status
        self._came.set()
        self._came = anyio.Event()

    def forget(self, worker_id: int) -> None:
        """Drop what is known of worker *worker_id* (it is gone from the pool)."""
        self._statuses.pop(worker_id, None)

    async def describe(self, worker_id: int) -> str:
        """How worker *worker_id*'s process ended, as the fork server says (``exit status 7``).

        Waits up to ``STATUS_WAIT`` for the report; ``""`` without one.
        """
        with anyio.move_on_after(STATUS_WAIT):
            while worker_id not in self._statuses:
                await self._came.wait()
        status = self._statuses.get(worker_id)
        if status is None:
            return ""
        if status < 0:
            return f"killed by {_signal_name(-status)}"
        return f"exit status {status}"


def _with_cause(how: str, cause: str | None) -> str:
    """How a worker ended (``killed by SIGKILL``), and why, when known."""
    if cause is None:
        return how
    return f"{how}: {cause}" if how else cause


def _log_gone_with(worker: WorkerHandle, how: str, why: str) -> None:
    """Log that *worker*, which ran no task, ended with its fork server, for *why*."""
    logger.warning(
        "worker %d (pid %s) ended with its fork server%s: %s",
        worker.id,
        worker.pid,
        f" ({how})" if how else "",
        why,
    )


def run_span(worker: WorkerHandle) -> tuple[float, float]:
    """When *worker*'s running job started, and now, in seconds since the epoch.

    As workers report them: the wall clock now, and the start that many seconds before as
    the monotonic clock measured them (a step of the wall clock meanwhile changes neither
    its run time nor its sign).
    """
    now = time.time()
    return now - max(0.0, time.monotonic() - worker.job_since), now


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
