"""Durable-queue rows made directly with SQL, in any state, for tests of what reads them."""

from __future__ import annotations

import json
import uuid as uuids
from typing import Any

import psycopg
from psycopg import sql


def unique_schema() -> str:
    """A schema name unique to one test."""
    return f"q_{uuids.uuid4().hex[:12]}"


def insert_job(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    queue: str = "jobs",
    task: str = "myapp.tasks.work",
    state: str = "queued",
    uuid: str | None = None,
    attempts: int = 0,
    max_attempts: int = 3,
    run_after: float = 0,
    age: float = 0,
    finished: float | None = None,
    last_error: str | None = None,
    on_duplicate: str | None = None,
) -> str:
    """Insert one job row; return its uuid.

    *run_after*, *age* (since ``created_at``) and *finished* (since ``finished_at``, for a
    finished job; default: when it was created) are seconds relative to now.
    """
    uuid = uuid or str(uuids.uuid4())
    message = json.dumps({"task": task, "uuid": uuid, "args": [], "kwargs": {}})
    if finished is None and state in ("done", "failed", "cancelled"):
        finished = age
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.jobs (uuid, queue, task, message, state, attempts, max_attempts,"
            " run_after, created_at, started_at, finished_at, lease_until, outcome, last_error,"
            " on_duplicate, dup_key)"
            " VALUES (%(uuid)s, %(queue)s, %(task)s, %(message)s, %(state)s, %(attempts)s,"
            " %(max_attempts)s, now() + make_interval(secs => %(run_after)s),"
            " now() - make_interval(secs => %(age)s),"
            " CASE WHEN %(state)s <> 'queued' THEN now() - make_interval(secs => %(age)s) END,"
            " now() - make_interval(secs => %(finished)s),"
            " CASE WHEN %(state)s = 'running' THEN now() + interval '30 seconds' END,"
            " CASE WHEN %(error)s::text IS NOT NULL THEN 'error' END, %(error)s,"
            " %(on_duplicate)s, CASE WHEN %(on_duplicate)s::text IS NOT NULL THEN %(task)s END)"
        ).format(sql.Identifier(schema)),
        {
            "uuid": uuid,
            "queue": queue,
            "task": task,
            "message": message,
            "state": state,
            "attempts": attempts,
            "max_attempts": max_attempts,
            "run_after": run_after,
            "age": age,
            "finished": finished,
            "error": last_error,
            "on_duplicate": on_duplicate,
        },
    )
    return uuid


def job_row(conn: psycopg.Connection[Any], schema: str, uuid: str) -> dict[str, Any] | None:
    """The row of job *uuid* as a dict, or ``None``."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        query = sql.SQL("SELECT * FROM {}.jobs WHERE uuid = %s").format(sql.Identifier(schema))
        return cursor.execute(query, (uuid,)).fetchone()
