"""Queuing failed or cancelled jobs of the durable queue again: ``dispatcherctl retry``.

A retried job waits from now with every attempt available again; one that an identical
waiting job blocks (its ``on_duplicate``) is left as it is. The services are woken for each
queue that got jobs back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, QUEUE_WAKEUP_IF_ROOM, DispatcherError
from dispatcher.server.queue_admin import jobs_table

_RESET: Final = sql.SQL(
    "state = 'queued', attempts = 0, run_after = pg_catalog.now(), lease_until = NULL,"
    " node_id = NULL, started_at = NULL, finished_at = NULL"
)
"""What a retry sets: waiting from now, with every attempt available again. The row's
``claims`` stays as it is: it fences claims, so an outcome of a claim made before the
retry can never settle one made after it, whatever their attempt numbers."""


class NotRetried(DispatcherError):
    """The job named cannot be retried (unknown, not finished, or a duplicate waits)."""


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
    jobs = jobs_table(schema)
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
    jobs = jobs_table(schema)
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
