"""The pool's shutdown sequence: stop every worker in order, within the grace period.

What waits in the scheduler is abandoned (or handed back to its durable queue) and said so,
every abandoned job named (the first 10,000 of each place);
idle workers are stopped at once; busy ones finish their task, or are terminated after the
grace period (their job recorded as abandoned), then killed if they linger; a worker that
has not gone after all that is killed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Final, Protocol

import anyio

from dispatcher.server.accounting import Accounting
from dispatcher.server.jobs import Job, listed
from dispatcher.server.log_arguments import MAX_PER_LINE, Phrase, in_lines
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import counted
from dispatcher.server.pool_changes import PoolChanges
from dispatcher.server.pool_worker_exits import EXIT_WAIT, run_span
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.workers import KILL_AFTER_TERM, WorkerHandle, WorkerStatus

logger = get_logger("dispatcher.pool")

MAX_ABANDONED_LOGGED: Final = 10_000
"""Abandoned jobs of one place (queued, blocked, delayed) a stop names in its log, twenty a
line: 500 lines, some 750 kB, within what the log's writer holds when its reader lags
(1 MiB). The others are counted by task."""


class StoppingPool(Protocol):
    """What the shutdown needs of the pool (a :class:`~dispatcher.server.supervisor.Supervisor`)."""

    @property
    def workers(self) -> list[WorkerHandle]:
        """Every worker the pool has (starting, ready, busy or stopping)."""

    def stop_worker(self, worker: WorkerHandle) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""


def log_abandoned(where: str, lost: Sequence[Job]) -> None:
    """Log every job of *lost*, abandoned from *where* (``queued``, ...), twenty a line.

    The first line says how many there are, and on how many lines they are named: the log's
    writer drops lines when its reader lags far behind (and says how many), so that an
    operator can tell a list is whole. Beyond :data:`MAX_ABANDONED_LOGGED` jobs, the others
    are counted by task on a last line, not named.
    """
    named = in_lines(
        [Phrase("%s (uuid %s)", job.task, job.uuid) for job in lost[:MAX_ABANDONED_LOGGED]]
    )
    total = counted(len(lost), f"{where} task")
    (shown, first), rest = named[0], named[1:]
    if not rest and shown == len(lost):
        logger.warning("shutting down with %s abandoned: %s", total, first)
        return
    logger.warning(
        "shutting down with %s abandoned: %s and %d more, named on %s after this one%s",
        total,
        first,
        len(lost) - shown,
        counted(len(rest), "line"),
        "" if len(lost) <= MAX_ABANDONED_LOGGED else " and counted by task on the last",
    )
    for count, jobs in rest:
        logger.warning(
            "shutting down: %s tasks %d-%d of %d abandoned: %s",
            where,
            shown + 1,
            shown + count,
            len(lost),
            jobs,
        )
        shown += count
    if shown < len(lost):
        tasks = Counter(job.task for job in lost[shown:]).most_common()
        by_task = (Phrase("%s %d", task, number) for task, number in tasks[:MAX_PER_LINE])
        logger.warning(
            "shutting down: %s tasks %d-%d of %d abandoned, not named (only the first %d "
            "are), by task: %s",
            where,
            shown + 1,
            len(lost),
            len(lost),
            MAX_ABANDONED_LOGGED,
            Phrase.joined(", ", by_task, more=len(tasks) - MAX_PER_LINE),
        )


async def shut_down(
    pool: StoppingPool,
    scheduler: Scheduler,
    accounting: Accounting,
    changes: PoolChanges,
    grace: float,
) -> None:
    """Stop every worker: idle ones at once, busy ones after their task or *grace* s."""
    for where, jobs in scheduler.close():
        # A job with a receipt goes back to its broker (a durable queue): not lost.
        lost = [job for job in jobs if job.receipt is None]
        back = [job for job in jobs if job.receipt is not None]
        if lost:
            log_abandoned(where, lost)
        if back:
            logger.info(
                "shutting down: %d %s tasks handed back to their durable queue, to run "
                "elsewhere or after the restart: %s",
                len(back),
                where,
                listed(back),
            )
    for worker in pool.workers:
        if worker.status is not WorkerStatus.BUSY:
            pool.stop_worker(worker)
    busy = [w for w in pool.workers if w.status is WorkerStatus.BUSY]
    if busy:
        running = counted(len(busy), "running task")
        logger.info("waiting up to %.0f s for %s to finish", grace, running)
    with anyio.move_on_after(grace):
        await changes.wait_until(
            lambda: not any(w.status is WorkerStatus.BUSY for w in pool.workers)
        )
    terminated = [w for w in pool.workers if w.status is WorkerStatus.BUSY]
    for worker in terminated:
        started, ended = run_span(worker)
        job = worker.terminate()
        if job is not None:
            accounting.abandoned(job, grace, worker.id, started, ended)
    if terminated:
        with anyio.move_on_after(KILL_AFTER_TERM):
            await changes.wait_until(
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
        await changes.wait_until(lambda: not pool.workers)
    for worker in pool.workers:
        worker.kill()
    with anyio.move_on_after(EXIT_WAIT):
        await changes.wait_until(lambda: not pool.workers)
