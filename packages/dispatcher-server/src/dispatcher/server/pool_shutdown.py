"""The pool's shutdown sequence: stop every worker in order, within the grace period.

What waits in the scheduler is abandoned (or handed back to its durable queue) and said so,
every abandoned job named (the first 10,000 of each place, some 512 kB of names in all);
idle workers are stopped at once; busy ones finish their task, or are terminated after the
grace period (their job recorded as abandoned), then killed if they linger; a worker that
has not gone after all that is killed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Final, Protocol

import anyio

from dispatcher.server.accounting import Accounting
from dispatcher.server.cancel_escalation import KILL_AFTER_TERM
from dispatcher.server.handle_status import WorkerStatus
from dispatcher.server.jobs import Job, listed
from dispatcher.server.log_arguments import MAX_PER_LINE, Phrase, in_lines
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_LOGGED_CHARS, counted
from dispatcher.server.pool_changes import PoolChanges
from dispatcher.server.pool_worker_exits import EXIT_WAIT, run_span
from dispatcher.server.scheduler import Scheduler
from dispatcher.server.workers import WorkerHandle

logger = get_logger("dispatcher.pool")

MAX_ABANDONED_LOGGED: Final = 10_000
"""Abandoned jobs of one place (queued, blocked, delayed) a stop names in its log, at most,
twenty a line. The others are counted by task."""

MAX_ABANDONED_NAMED_BYTES: Final = 512_000
"""Characters of the abandoned jobs' names (task and uuid) a stop logs, across its places, as
a JSON line writes them (see :func:`name_size`): with each line's own (its time, its JSON
fields), well within what the log's writer holds when its reader lags (1 MiB). 10,000 names
of one place with a task name of 62 characters made 1.17 MB of JSON lines. The others are
counted by task."""

NAME_OVERHEAD: Final = len(", ") + len(" (uuid )")
"""Characters of a job's name in the log besides its task and uuid."""


def name_size(job: Job) -> int:
    r"""Characters of *job*'s name (``task (uuid u), ``) in a log line, written as JSON.

    A uuid may be any text: a character the log escapes (``\x00``, 5 characters in JSON), or
    one a JSON line writes as an escape (``\u00e9``; 12 characters for an emoji) counts as
    written, not as one.
    """
    task, uuid = job.task, job.uuid
    if task.isascii() and uuid.isascii() and uuid.isprintable() and len(uuid) <= MAX_LOGGED_CHARS:
        return len(task) + len(uuid) + NAME_OVERHEAD + uuid.count("\\") + uuid.count('"')
    written = str(Phrase("%s (uuid %s)", task, uuid))
    return len(json.dumps(written)) - 2 + len(", ")


class NamingBudget:
    """What is left of :data:`MAX_ABANDONED_NAMED_BYTES` as a stop names its abandoned jobs."""

    def __init__(self, total: int = MAX_ABANDONED_NAMED_BYTES) -> None:
        self.left = total

    def take(self, jobs: Sequence[Job]) -> int:
        """How many of the first *jobs* may be named (their names taken from what is left)."""
        named = 0
        for job in jobs[:MAX_ABANDONED_LOGGED]:
            size = name_size(job)
            if size > self.left:
                break
            self.left -= size
            named += 1
        return named


class StoppingPool(Protocol):
    """What the shutdown needs of the pool (a :class:`~dispatcher.server.supervisor.Supervisor`)."""

    @property
    def workers(self) -> list[WorkerHandle]:
        """Every worker the pool has (starting, ready, busy or stopping)."""

    def stop_worker(self, worker: WorkerHandle) -> None:
        """Ask a worker to exit (after its current task, if it has one)."""


def log_abandoned(where: str, lost: Sequence[Job], budget: NamingBudget | None = None) -> None:
    """Log every job of *lost*, abandoned from *where* (``queued``, ...), twenty a line.

    The first line says how many there are, and on how many lines they are named: the log's
    writer drops lines when its reader lags far behind (and says how many), so that an
    operator can tell a list is whole. Beyond :data:`MAX_ABANDONED_LOGGED` jobs, or the
    names *budget* (shared by the places of one stop) lets it name, the others are counted
    by task on a last line, not named.
    """
    nameable = (budget or NamingBudget()).take(lost)
    total = counted(len(lost), f"{where} task")
    if not nameable:
        logger.warning(
            "shutting down with %s abandoned, not named (a stop names %d characters of "
            "abandoned tasks at most, used up by those before), by task: %s",
            total,
            MAX_ABANDONED_NAMED_BYTES,
            _by_task(lost),
        )
        return
    named = in_lines([Phrase("%s (uuid %s)", job.task, job.uuid) for job in lost[:nameable]])
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
        "" if nameable == len(lost) else " and counted by task on the last",
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
        logger.warning(
            "shutting down: %s tasks %d-%d of %d abandoned, not named (only the first %d "
            "are), by task: %s",
            where,
            shown + 1,
            len(lost),
            len(lost),
            nameable,
            _by_task(lost[shown:]),
        )


def _by_task(jobs: Sequence[Job]) -> Phrase:
    """*jobs* counted by task, the most first: ``app.work 10, app.other 1``."""
    tasks = Counter(job.task for job in jobs).most_common()
    by_task = (Phrase("%s %d", task, number) for task, number in tasks[:MAX_PER_LINE])
    return Phrase.joined(", ", by_task, more=len(tasks) - MAX_PER_LINE)


async def shut_down(
    pool: StoppingPool,
    scheduler: Scheduler,
    accounting: Accounting,
    changes: PoolChanges,
    grace: float,
) -> None:
    """Stop every worker: idle ones at once, busy ones after their task or *grace* s."""
    budget = NamingBudget()
    for where, jobs in scheduler.close():
        # A job with a receipt goes back to its broker (a durable queue): not lost.
        lost = [job for job in jobs if job.receipt is None]
        back = [job for job in jobs if job.receipt is not None]
        if lost:
            log_abandoned(where, lost, budget)
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
