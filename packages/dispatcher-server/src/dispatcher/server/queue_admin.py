"""Operator reads and repairs of the durable queue's tables: list, retry, purge.

What ``dispatcherctl jobs``, ``retry`` and ``purge`` run, over one synchronous connection to
the database of ``brokers.pg_queue``. Listing goes through the publisher's readers
(:func:`dispatcher.publish.jobs` and :func:`~dispatcher.publish.get_job`); the repairs are
statements of their own, each naming the configured schema. None holds a transaction open
longer than one command (long transactions hold back vacuum on a hot queue table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.config import PgQueueBroker, Settings
from dispatcher.publish import JOB_STATES, JobState, get_job, jobs
from dispatcher.publish.job import MAX_LISTED
from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, DispatcherError

MAX_LIMIT: Final = MAX_LISTED
"""The most jobs one listing returns."""
STATES: Final = JOB_STATES
"""Every state a job row can be in."""
FINISHED_STATES: Final[tuple[JobState, ...]] = ("done", "failed", "cancelled")
"""The states a job ends in: the rows ``purge`` may delete."""

PURGE_BATCH: Final = 10_000
"""Rows deleted per statement (and transaction) by :func:`purge`."""

_RESET: Final = sql.SQL(
    "state = 'queued', attempts = 0, run_after = now(), lease_until = NULL, node_id = NULL,"
    " started_at = NULL, finished_at = NULL"
)
"""What a retry sets: waiting from now, with every attempt available again. The row's
``claims`` stays as it is: it fences claims, so an outcome of a claim made before the
retry can never settle one made after it, whatever their attempt numbers."""


class QueueNotConfigured(DispatcherError):
    """The config has no ``brokers.pg_queue`` section."""


class TablesMissing(DispatcherError):
    """The queue's tables do not exist in the configured schema: not migrated yet."""


class NotRetried(DispatcherError):
    """The job named cannot be retried (unknown, not finished, or a duplicate waits)."""


def queue_settings(settings: Settings) -> PgQueueBroker:
    """The ``brokers.pg_queue`` section of *settings*, or :class:`QueueNotConfigured`."""
    section = settings.brokers.pg_queue
    if section is None:
        raise QueueNotConfigured(f"{settings.source} has no brokers.pg_queue")
    return section


def _jobs(schema: str) -> sql.Composed:
    return sql.SQL("{}.jobs").format(sql.Identifier(schema))


def check_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """Raise :class:`TablesMissing` unless *schema* holds the queue's ``jobs`` table."""
    quoted = sql.Identifier(schema).as_string(conn) + ".jobs"
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (quoted,)).fetchone()
    if not (row and row[0]):
        raise TablesMissing(
            f"the durable queue's tables are missing from schema {schema!r}: "
            "run `dispatcherctl migrate` first"
        )


def list_jobs(
    conn: psycopg.Connection[Any],
    *,
    state: JobState | None = None,
    queue: str | None = None,
    task: str | None = None,
    uuid: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs matching every filter given, newest first, at most *limit* (up to 10,000).

    Each is a dict of the job's columns (timestamps as aware datetimes, ``result`` decoded)
    plus ``now``, the database's clock when they were read. Read with the publisher's
    readers, in the schema of the process's config.
    """
    if uuid is not None:
        job = get_job(uuid, connection=conn)
        wanted = {"state": state, "queue": queue, "task": task}
        found = [] if job is None else [job]
        found = [j for j in found if all(v in (None, getattr(j, k)) for k, v in wanted.items())]
    else:
        found = jobs(state=state, queue=queue, task=task, limit=limit, connection=conn)
    row = conn.execute("SELECT now()").fetchone()
    now = None if row is None else row[0]
    return [{**asdict(job), "now": now} for job in found]


@dataclass
class Retried:
    """What a retry did."""

    by_queue: Counter[str] = field(default_factory=Counter)
    """Jobs queued again, by queue."""
    skipped: int = 0
    """Jobs left as they were: an identical job already waits (``on_duplicate``)."""

    @property
    def count(self) -> int:
        """Jobs queued again."""
        return sum(self.by_queue.values())


def retry_job(conn: psycopg.Connection[Any], schema: str, uuid: str) -> Retried:
    """Queue the failed or cancelled job *uuid* again, with its attempts reset to 0.

    Raises :class:`NotRetried` if there is no such job, it has not ended that way, or an
    identical job already waits (its ``on_duplicate`` mode forbids a second).
    """
    jobs = _jobs(schema)
    done = Retried()
    with conn.transaction():
        found = conn.execute(
            sql.SQL("SELECT id, state FROM {} WHERE uuid = %s FOR UPDATE").format(jobs), (uuid,)
        ).fetchone()
        if found is None:
            raise NotRetried(f"no job has uuid {uuid!r}")
        if found[1] not in ("failed", "cancelled"):
            raise NotRetried(f"job {uuid} is {found[1]}: only failed or cancelled jobs are retried")
        if not _retry_one(conn, jobs, found[0], done):
            raise NotRetried(f"job {uuid} not retried: an identical job is already waiting")
        _wake(conn, done.by_queue)
    return done


def retry_failed(conn: psycopg.Connection[Any], schema: str, queue: str | None = None) -> Retried:
    """Queue every failed job (of *queue*, if given) again, with its attempts reset to 0.

    One transaction: jobs without an ``on_duplicate`` constraint in one statement, the
    others one by one, skipping those an identical waiting job blocks. Cancelled jobs stay
    as they are (retry those by uuid).
    """
    jobs = _jobs(schema)
    where: sql.Composable = sql.SQL("state = 'failed'")
    values: list[Any] = []
    if queue is not None:
        where += sql.SQL(" AND queue = %s")
        values.append(queue)
    done = Retried()
    with conn.transaction():
        free = sql.SQL(
            "UPDATE {} SET {} WHERE {} AND (on_duplicate IS NULL OR on_duplicate = 'serial')"
            " RETURNING queue"
        ).format(jobs, _RESET, where)
        for (name,) in conn.execute(free, values).fetchall():
            done.by_queue[name] += 1
        constrained = sql.SQL(
            "SELECT id FROM {} WHERE {} AND on_duplicate IN ('discard', 'queue_one') ORDER BY id"
        ).format(jobs, where)
        for (row_id,) in conn.execute(constrained, values).fetchall():
            if not _retry_one(conn, jobs, row_id, done):
                done.skipped += 1
        _wake(conn, done.by_queue)
    return done


def _retry_one(
    conn: psycopg.Connection[Any], jobs: sql.Composed, row_id: int, done: Retried
) -> bool:
    """Queue row *row_id* again unless a unique index refuses it; count it in *done*."""
    query = sql.SQL(
        "UPDATE {} SET {} WHERE id = %s AND state IN ('failed', 'cancelled') RETURNING queue"
    ).format(jobs, _RESET)
    try:
        with conn.transaction():  # a savepoint: a refusal undoes this row only
            row = conn.execute(query, (row_id,)).fetchone()
    except psycopg.errors.UniqueViolation:
        return False
    if row is not None:
        done.by_queue[row[0]] += 1
    return row is not None


def _wake(conn: psycopg.Connection[Any], queues: Counter[str]) -> None:
    """NOTIFY the services' wake-up channel once per queue (delivered on commit)."""
    names: Sequence[str] = sorted(queues)
    if names:
        conn.execute(
            "SELECT pg_notify(%s, name) FROM unnest(%s::text[]) AS name",
            (QUEUE_WAKEUP_CHANNEL, list(names)),
        )


def purge(conn: psycopg.Connection[Any], schema: str, state: JobState, older_than: float) -> int:
    """Delete the jobs in *state* (a finished one) that ended *older_than* seconds ago.

    Deletes :data:`PURGE_BATCH` rows per transaction, so that a large purge never holds
    many locks or one long transaction. Returns how many rows went.
    """
    if state not in FINISHED_STATES:
        raise ValueError(f"only finished jobs are purged, not {state!r} ones")
    # The ids go through an array, so that the rows are then found by id: a join would
    # scan the whole table for every batch.
    query = sql.SQL(
        "DELETE FROM {jobs} WHERE id = ANY(ARRAY(SELECT id FROM {jobs} WHERE state = %s"
        " AND finished_at < now() - make_interval(secs => %s) LIMIT %s))"
    ).format(jobs=_jobs(schema))
    deleted = 0
    while True:
        with conn.transaction():
            count = conn.execute(query, (state, older_than, PURGE_BATCH)).rowcount
        deleted += count
        if count < PURGE_BATCH:
            return deleted
