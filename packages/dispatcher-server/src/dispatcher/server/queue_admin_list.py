"""Listing the durable queue's jobs for an operator: what ``dispatcherctl jobs`` reads.

It runs the publisher's statements (those of :func:`dispatcher.publish.jobs` and
:func:`~dispatcher.publish.get_job`) but reads their timestamps its own way, so that a value
Python cannot hold is shown rather than fatal.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from dispatcher.publish import JOB_STATES, JobState
from dispatcher.publish.job import COLUMNS, MAX_LISTED, get_job_query, jobs_query, read_row
from dispatcher.publish.jsonb import register_tolerant_jsonb
from dispatcher.publish.timestamps import read_timestamp, session_zone, timestamp_sql

MAX_LIMIT: Final = MAX_LISTED
"""The most jobs one listing returns."""
STATES: Final = JOB_STATES
"""Every state a job row can be in."""

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
