"""Operator reads and repairs of the durable queue's tables: list, retry, purge.

What ``dispatcherctl jobs``, ``retry`` and ``purge`` run, over one synchronous connection to
the database of ``brokers.pg_queue``. Listing runs the publisher's statements (those of
:func:`dispatcher.publish.jobs` and :func:`~dispatcher.publish.get_job`) but reads their
timestamps its own way, so that a value Python cannot hold is shown rather than fatal; the repairs
are statements of their own, each naming the configured schema. None holds a transaction
open longer than one command (long transactions hold back vacuum on a hot queue table).

Every change re-checks, on the row it writes, the conditions it chose the row by: a row that
another session (a retry, a service, the services' own purge) changes meanwhile is left as
that session made it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.config import PgQueueBroker, Settings
from dispatcher.config.settings import dispatcherctl_command
from dispatcher.publish import JOB_STATES, JobState
from dispatcher.publish.job import COLUMNS, MAX_LISTED, get_job_query, jobs_query, read_row
from dispatcher.publish.jsonb import register_tolerant_jsonb
from dispatcher.publish.timestamps import read_timestamp, session_zone, timestamp_sql
from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, QUEUE_WAKEUP_IF_ROOM, DispatcherError
from dispatcher.server.brokers.pg_queue.migrations import (
    VERSION_TABLE,
    damaged,
    problem,
    read_version,
)

MAX_LIMIT: Final = MAX_LISTED
"""The most jobs one listing returns."""
STATES: Final = JOB_STATES
"""Every state a job row can be in."""
FINISHED_STATES: Final[tuple[JobState, ...]] = ("done", "failed", "cancelled")
"""The states a job ends in: the rows ``purge`` may delete."""

PURGE_BATCH: Final = 10_000
"""Rows deleted per statement (and transaction) by :func:`purge`."""

MAX_OLDER_THAN: Final = 31_536_000
"""The most seconds :func:`purge` looks back (365 days, the longest ``keep_finished``)."""

_RESET: Final = sql.SQL(
    "state = 'queued', attempts = 0, run_after = pg_catalog.now(), lease_until = NULL,"
    " node_id = NULL, started_at = NULL, finished_at = NULL"
)
"""What a retry sets: waiting from now, with every attempt available again. The row's
``claims`` stays as it is: it fences claims, so an outcome of a claim made before the
retry can never settle one made after it, whatever their attempt numbers."""


class QueueNotConfigured(DispatcherError):
    """The config has no ``brokers.pg_queue`` section."""


class TablesMissing(DispatcherError):
    """The queue's tables do not exist in the configured schema, or are at an older version.

    Not migrated yet, or not since this version of dispatcher was installed.
    """


class NotRetried(DispatcherError):
    """The job named cannot be retried (unknown, not finished, or a duplicate waits)."""


class NotCancelled(DispatcherError):
    """The job named cannot be cancelled here: unknown, or no longer waiting."""


def queue_settings(settings: Settings) -> PgQueueBroker:
    """The ``brokers.pg_queue`` section of *settings*, or :class:`QueueNotConfigured`."""
    section = settings.brokers.pg_queue
    if section is None:
        raise QueueNotConfigured(f"{settings.source} has no brokers.pg_queue")
    return section


def queue_known(conn: psycopg.Connection[Any], section: PgQueueBroker, queue: str) -> bool:
    """Whether *queue* is one the config lists, or one that some job of the table names."""
    if queue in section.queues:
        return True
    statement = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE queue = %s)")
    row = conn.execute(statement.format(_jobs(section.schema)), (queue,)).fetchone()
    return bool(row and row[0])


def _jobs(schema: str) -> sql.Composed:
    return sql.SQL("{}.jobs").format(sql.Identifier(schema))


def check_tables(conn: psycopg.Connection[Any], schema: str, config_file: str | None) -> None:
    """Raise :class:`TablesMissing` unless *schema* holds the queue's tables, migrated.

    Refused: tables missing, damaged, or at a version older than this code needs (said as a
    service says it, naming ``dispatcherctl migrate``); newer ones are taken (a rolling
    upgrade). A role that may not read the version gets the existence check alone.
    *config_file* is the config's file (:attr:`Settings.file`), for the command to run.
    """
    try:
        found = read_version(conn, schema)
    except psycopg.errors.InsufficientPrivilege:
        _check_jobs_table(conn, schema, config_file)
        return
    if found is None or found == 0:
        raise TablesMissing(_missing(schema, config_file))
    refusal = problem(found, schema, config_file)
    if refusal is not None:
        raise TablesMissing(refusal)


def _missing(schema: str, config_file: str | None) -> str:
    return (
        f"the durable queue's tables are missing from schema {schema!r}: "
        f"run `{dispatcherctl_command('migrate', config_file)}` first (it creates them, or "
        "says what to do if they were damaged)"
    )


def _check_jobs_table(conn: psycopg.Connection[Any], schema: str, config_file: str | None) -> None:
    """Raise :class:`TablesMissing` unless *schema* holds the queue's ``jobs`` table."""
    name = sql.Identifier(schema).as_string(conn)
    row = conn.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL, pg_catalog.to_regclass(%s) IS NOT NULL",
        (f"{name}.jobs", f"{name}.{VERSION_TABLE}"),
    ).fetchone()
    if row is not None and not row[0] and row[1]:  # migrated, then the jobs table dropped
        raise TablesMissing(damaged(schema))
    if not (row and row[0]):
        raise TablesMissing(_missing(schema, config_file))


MAX_SETTING_MS: Final = 2_147_483_647
"""The largest number of milliseconds a PostgreSQL timeout setting takes."""


def limit_waits(conn: psycopg.Connection[Any], lock_timeout: float) -> None:
    """Make *conn*'s statements wait at most *lock_timeout* seconds for a lock.

    A statement that waits longer fails with :class:`psycopg.errors.LockNotAvailable`,
    which undoes what its transaction did. How long a statement runs once it has its locks
    is not bounded here: retrying a million failed jobs takes as long as it takes.
    """
    conn.execute(
        "SELECT pg_catalog.set_config('lock_timeout', %s, false)", (_milliseconds(lock_timeout),)
    )


def _milliseconds(seconds: float) -> str:
    """*seconds* as a setting PostgreSQL takes (1 ms to its largest, about 24 days)."""
    return f"{min(MAX_SETTING_MS, max(1, round(seconds * 1000)))}ms"


_NOW: Final = f"SELECT {timestamp_sql('pg_catalog.now()')}"


def list_jobs(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    state: JobState | None = None,
    queue: str | None = None,
    task: str | None = None,
    uuid: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs of *schema* matching every filter given, newest first, at most *limit* (10,000).

    Each is a dict of the job's columns plus ``now``, the database's clock when they were
    read: ``result`` decoded, timestamps as aware datetimes, or as PostgreSQL writes them
    when a datetime cannot hold them (``infinity``, ``-infinity``, years before 1 or after
    9999), as :func:`~dispatcher.publish.timestamps.read_timestamp` reads them: whatever the
    session's ``DateStyle``, in its time zone.

    :raises ValueError: when *state* or *limit* is not valid.
    """
    if uuid is not None:
        statement, params = get_job_query(schema), [uuid]
    else:
        statement, params = jobs_query(schema, state=state, queue=queue, task=task, limit=limit)
    with conn.cursor() as cursor:
        register_tolerant_jsonb(cursor.adapters)
        rows = cursor.execute(statement, params).fetchall()
        now = cursor.execute(_NOW).fetchone()
    zone = session_zone(conn)
    found = [dict(zip(COLUMNS, read_row(row, zone, read_timestamp), strict=True)) for row in rows]
    if uuid is not None:
        wanted = {"state": state, "queue": queue, "task": task}
        found = [j for j in found if all(v in (None, j[k]) for k, v in wanted.items())]
    at = None if now is None else read_timestamp(now[0], zone)
    return [{**job, "now": at} for job in found]


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


CANCELLED_WAITING: Final = "cancelled by an operator before it started"
"""The ``last_error`` of a waiting job :func:`cancel_waiting` cancelled, that never ran."""

CANCELLED_AGAIN: Final = "cancelled by an operator while it waited to run again"
"""The start of the ``last_error`` of a waiting job that ran before (a retry's wait): the
error of its last run follows, kept."""

_CANCELLED_ERROR: Final = sql.SQL(
    "CASE WHEN attempts = 0 AND last_error IS NULL THEN %(fresh)s ELSE %(again)s"
    " || CASE WHEN attempts > 0"
    " THEN pg_catalog.format(' (%%s of %%s attempts used)', attempts, max_attempts)"
    " ELSE '' END || CASE WHEN last_error IS NOT NULL"
    " THEN pg_catalog.format('; the last ended in %%s: %%s',"
    " coalesce(outcome, 'error'), last_error)"
    " ELSE '' END END"
)
"""What :func:`cancel_waiting` writes in ``last_error``: never the claim that a job that ran
(and failed) did not start, and never losing why it failed."""


def cancel_waiting(
    conn: psycopg.Connection[Any], schema: str, uuid: str, task: str | None = None
) -> str:
    """Cancel the waiting (``queued``) job *uuid*: it ends ``cancelled`` and never starts.

    Its ``last_error`` says so: :data:`CANCELLED_WAITING` for a job that never ran; for
    one that waited to run again (a retry), :data:`CANCELLED_AGAIN`, the attempts used, and
    how its last run ended with that run's error. With *task*, only a job of that task is
    cancelled. Returns its queue. A job a service has claimed is its service's to cancel (the
    ``cancel`` control command), so it is refused here, as are unknown and finished jobs.

    :raises NotCancelled: saying why.
    """
    jobs = _jobs(schema)
    row = conn.execute(
        sql.SQL(
            "UPDATE {} SET state = 'cancelled', outcome = 'cancelled', last_error = {},"
            " finished_at = pg_catalog.now(), lease_until = NULL WHERE uuid = %(uuid)s"
            " AND state = 'queued' AND (%(task)s::text IS NULL OR task = %(task)s)"
            " RETURNING queue"
        ).format(jobs, _CANCELLED_ERROR),
        {"fresh": CANCELLED_WAITING, "again": CANCELLED_AGAIN, "uuid": uuid, "task": task},
    ).fetchone()
    if row is not None:
        return str(row[0])
    found = conn.execute(sql.SQL("SELECT state FROM {} WHERE uuid = %s").format(jobs), (uuid,))
    state = found.fetchone()
    if state is None:
        raise NotCancelled(f"no job has uuid {uuid!r}")
    if state[0] == "queued":  # of another task than *task*
        raise NotCancelled(f"job {uuid} is not a job of task {task!r}")
    if state[0] == "running":
        raise NotCancelled(
            f"job {uuid} is running (or held ahead by a service): cancel it with "
            f"'dispatcherctl cancel --uuid {uuid}'"
        )
    raise NotCancelled(f"job {uuid} is {state[0]} already: only waiting jobs are cancelled here")


def cancel_waiting_of_task(
    conn: psycopg.Connection[Any], schema: str, task: str, queue: str | None = None
) -> Counter[str]:
    """Cancel every waiting (``queued``) job of *task*; return how many, by queue.

    Only those of *queue*, if given; each as :func:`cancel_waiting` cancels one. Jobs a
    service has claimed are left to it (the ``cancel`` control command): a job claimed while
    this runs is not cancelled here.
    """
    rows = conn.execute(
        sql.SQL(
            "UPDATE {} SET state = 'cancelled', outcome = 'cancelled', last_error = {},"
            " finished_at = pg_catalog.now(), lease_until = NULL WHERE state = 'queued'"
            " AND task = %(task)s AND (%(queue)s::text IS NULL OR queue = %(queue)s)"
            " RETURNING queue"
        ).format(_jobs(schema), _CANCELLED_ERROR),
        {"fresh": CANCELLED_WAITING, "again": CANCELLED_AGAIN, "task": task, "queue": queue},
    ).fetchall()
    return Counter(str(row[0]) for row in rows)


def count_waiting(conn: psycopg.Connection[Any], schema: str, task: str) -> int:
    """How many jobs of *task* wait in the table for a time (delayed, or for a retry).

    Jobs ready to run are left out: a service claims them in moments.
    """
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.count(*) FROM {} WHERE state = 'queued' AND task = %s"
            " AND run_after > pg_catalog.now()"
        ).format(_jobs(schema)),
        (task,),
    ).fetchone()
    return 0 if row is None else int(row[0])


def retry_job(conn: psycopg.Connection[Any], schema: str, uuid: str) -> Retried:
    """Queue the failed or cancelled job *uuid* again, with its attempts reset to 0.

    Raises :class:`NotRetried` if there is no such job, it has not ended that way, or an
    identical job already waits (its ``on_duplicate`` mode forbids a second).
    """
    jobs = _jobs(schema)
    done = Retried()
    with conn.transaction():
        # The row stays locked until the retry commits: nothing changes it in between.
        found = conn.execute(
            sql.SQL("SELECT id, state FROM {} WHERE uuid = %s FOR UPDATE").format(jobs), (uuid,)
        ).fetchone()
        if found is None:
            raise NotRetried(f"no job has uuid {uuid!r}")
        if found[1] not in ("failed", "cancelled"):
            raise NotRetried(f"job {uuid} is {found[1]}: only failed or cancelled jobs are retried")
        where = sql.SQL("state IN ('failed', 'cancelled')")
        if not _retry_one(conn, jobs, found[0], where, [], done):
            raise NotRetried(f"job {uuid} not retried: an identical job is already waiting")
        _wake(conn, done.by_queue)
    return done


def retry_failed(conn: psycopg.Connection[Any], schema: str, queue: str | None = None) -> Retried:
    """Queue every failed job (of *queue*, if given) again, with its attempts reset to 0.

    One transaction: jobs without an ``on_duplicate`` constraint in one statement, the
    others one by one (locked first), skipping those an identical waiting job blocks.
    Cancelled jobs stay as they are (retry those by uuid).
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
            "SELECT id FROM {} WHERE {} AND on_duplicate IN ('discard', 'queue_one')"
            " ORDER BY id FOR UPDATE"
        ).format(jobs, where)
        for (row_id,) in conn.execute(constrained, values).fetchall():
            if not _retry_one(conn, jobs, row_id, where, values, done):
                done.skipped += 1
        _wake(conn, done.by_queue)
    return done


def _retry_one(
    conn: psycopg.Connection[Any],
    jobs: sql.Composed,
    row_id: int,
    where: sql.Composable,
    values: list[Any],
    done: Retried,
) -> bool:
    """Queue row *row_id* again if it still meets *where*, unless a unique index refuses it.

    Counts it in *done*; ``False`` when refused (or no longer meeting *where*).
    """
    query = sql.SQL("UPDATE {} SET {} WHERE id = %s AND {} RETURNING queue").format(
        jobs, _RESET, where
    )
    try:
        with conn.transaction():  # a savepoint: a refusal undoes this row only
            row = conn.execute(query, [row_id, *values]).fetchone()
    except psycopg.errors.UniqueViolation:
        return False
    if row is not None:
        done.by_queue[row[0]] += 1
    return row is not None


def _wake(conn: psycopg.Connection[Any], queues: Counter[str]) -> None:
    """NOTIFY the services' wake-up channel once per queue (delivered on commit).

    Not while the server's NOTIFY queue is half full or more: the services poll.
    """
    names: Sequence[str] = sorted(queues)
    if names:
        conn.execute(
            "SELECT pg_catalog.pg_notify(%s, name) FROM pg_catalog.unnest(%s::text[]) AS name"
            f" WHERE {QUEUE_WAKEUP_IF_ROOM}",
            (QUEUE_WAKEUP_CHANNEL, list(names)),
        )


def purge(
    conn: psycopg.Connection[Any],
    schema: str,
    state: JobState,
    older_than: float,
    queue: str | None = None,
) -> int:
    """Delete the jobs in *state* (a finished one) that ended *older_than* seconds ago.

    Those of every queue, or of *queue* alone.

    Deletes :data:`PURGE_BATCH` rows per transaction, so that a large purge never holds
    many locks or one long transaction. A row another session is changing (a retry queuing
    it again) is skipped, and one changed since the batch was chosen is deleted only if it
    still is in *state* and old enough. Returns how many rows went.

    :raises ValueError: when *state* is not a finished state, or *older_than* not within
        0 to :data:`MAX_OLDER_THAN`.
    """
    if state not in FINISHED_STATES:
        raise ValueError(f"only finished jobs are purged, not {state!r} ones")
    if not 0 <= older_than <= MAX_OLDER_THAN:
        raise ValueError(f"older_than: must be 0 to {MAX_OLDER_THAN} seconds, got {older_than!r}")
    # The ids go through an array, so that the rows are then found by id: a join would
    # scan the whole table for every batch. The outer conditions are those PostgreSQL checks
    # again on a row updated while the DELETE waited for it (an id alone would still match).
    query = sql.SQL(
        "DELETE FROM {jobs} WHERE id = ANY(ARRAY(SELECT id FROM {jobs} WHERE {old}"
        " LIMIT %(batch)s FOR UPDATE SKIP LOCKED)) AND {old}"
    ).format(
        jobs=_jobs(schema),
        old=sql.SQL(
            "state = %(state)s AND finished_at"
            " < pg_catalog.now() - pg_catalog.make_interval(secs => %(older_than)s)"
            + ("" if queue is None else " AND queue = %(queue)s")
        ),
    )
    params = {"state": state, "older_than": older_than, "batch": PURGE_BATCH, "queue": queue}
    deleted = 0
    while True:
        with conn.transaction():
            count = conn.execute(query, params).rowcount
        deleted += count
        if count < PURGE_BATCH:
            return deleted
