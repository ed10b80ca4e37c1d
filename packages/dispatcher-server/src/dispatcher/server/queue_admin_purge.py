"""Deleting finished jobs of the durable queue that ended long ago: ``dispatcherctl purge``."""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.publish import JobState
from dispatcher.server.queue_admin import jobs_table

FINISHED_STATES: Final[tuple[JobState, ...]] = ("done", "failed", "cancelled")
"""The states a job ends in: the rows ``purge`` may delete."""

PURGE_BATCH: Final = 10_000
"""Rows deleted per statement (and transaction) by :func:`purge`."""

MAX_OLDER_THAN: Final = 31_536_000
"""The most seconds :func:`purge` looks back (365 days, the longest ``keep_finished``)."""


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
        jobs=jobs_table(schema),
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
