"""Cancelling durable jobs that still wait in the table: ``dispatcherctl cancel-job``.

A waiting (``queued``) job ends ``cancelled`` and never starts; one a service has claimed
is its service's to cancel (the ``cancel`` control command). Also counts the jobs of a task
that wait for a time, for ``dispatcherctl cancel``'s hint.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.schema import DispatcherError
from dispatcher.server.queue_admin import jobs_table


class NotCancelled(DispatcherError):
    """The job named cannot be cancelled here: unknown, or no longer waiting."""


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
    jobs = jobs_table(schema)
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
        ).format(jobs_table(schema), _CANCELLED_ERROR),
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
        ).format(jobs_table(schema)),
        (task,),
    ).fetchone()
    return 0 if row is None else int(row[0])
