"""Durable (pg_queue) tests: a schema of their own, jobs stored with SQL, rows read back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, duplicate_key, new_uuid
from dispatcher.server.brokers.pg_queue.migrations import migrate
from support.queue_rows import unique_schema
from support.service import TASKS, wait_until

Conn = psycopg.Connection[Any]

TRACKED = ("discard", "serial", "queue_one")


def migrated(conn: Conn, schema: str) -> str:
    """Create the queue's tables in *schema* (as ``dispatcherctl migrate`` does); return it."""
    migrate(conn, schema)
    return schema


@contextmanager
def own_schema(dsn: str) -> Iterator[str]:
    """A new schema with the queue's tables (as ``dispatcherctl migrate`` makes them), dropped
    when the block ends."""
    name = unique_schema()
    with psycopg.connect(dsn) as conn:
        migrate(conn, name)
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def queue_config(dsn: str, schema: str, queue: str, **options: Any) -> dict[str, Any]:
    """A service config with only the durable queue *queue*: short lease, quick retries."""
    section = {
        "conninfo": dsn,
        "schema": schema,
        "queues": [queue],
        "lease": 2,
        "poll_interval": 0.5,
        "retry_backoff": 0.2,
        "retry_jitter": 0,
        **options,
    }
    return {
        "version": 1,
        "brokers": {"pg_queue": section},
        "tasks": {"modules": ["support.service_tasks"]},
        "service": {"pool": {"min_workers": 1, "max_workers": 2}, "shutdown_grace": 5},
    }


def job_message(task: str, *args: Any, **options: Any) -> dict[str, Any]:
    """A task message; a bare *task* name means one of ``support.service_tasks``."""
    name = task if "." in task else TASKS + task
    arguments = [str(arg) if isinstance(arg, Path) else arg for arg in args]
    return {"task": name, "uuid": new_uuid(), "args": arguments, **options}


def enqueue(
    conn: Conn,
    schema: str,
    queue: str,
    messages: Sequence[dict[str, Any] | str],
    *,
    max_attempts: int = 3,
) -> list[str]:
    """Store *messages* (objects, or raw text stored as is) and NOTIFY once; return uuids.

    What a publisher does: one transaction with the rows and one wake-up for the queue.
    """
    rows = []
    for message in messages:
        text = message if isinstance(message, str) else json.dumps(message)
        fields = message if isinstance(message, dict) else _signed_body(text)
        uuid = str(fields.get("uuid") or new_uuid())
        mode = fields.get("on_duplicate")
        tracked = mode in TRACKED
        control = fields.get("control")
        task = str(fields.get("task") or (f"control:{control}" if control else "unknown"))
        key = duplicate_key(fields) if tracked else None
        delay = float(fields.get("delay") or 0)
        rows.append((uuid, queue, task, text, max_attempts, delay, mode if tracked else None, key))
    statement = sql.SQL(
        "INSERT INTO {}.jobs (uuid, queue, task, message, max_attempts, run_after,"
        " on_duplicate, dup_key)"
        " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s, %s)"
    ).format(sql.Identifier(schema))
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(statement, rows)
        cursor.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, queue))
    return [row[0] for row in rows]


def _signed_body(text: str) -> dict[str, Any]:
    """The message a signed envelope's *text* holds (its row takes that message's columns),
    else nothing."""
    try:
        envelope = json.loads(text)
        body = json.loads(envelope["body"]) if isinstance(envelope, dict) else None
    except (ValueError, KeyError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def jobs(conn: Conn, schema: str, uuids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The job rows (of these *uuids*), oldest first, as dicts."""
    query = sql.SQL(
        "SELECT uuid, state, attempts, max_attempts, outcome, last_error, result, node_id, run_after,"
        " created_at, started_at, finished_at FROM {}.jobs"
        " WHERE %(all)s OR uuid = ANY(%(uuids)s) ORDER BY id"
    ).format(sql.Identifier(schema))
    wanted = list(uuids) if uuids is not None else []
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        cursor.execute(query, {"all": uuids is None, "uuids": wanted})
        return cursor.fetchall()


def wait_for_states(
    conn: Conn, schema: str, uuids: Sequence[str], states: set[str], timeout: float = 20
) -> list[dict[str, Any]]:
    """Wait until every job of *uuids* is in one of *states*; return the rows."""

    def settled() -> list[dict[str, Any]] | None:
        rows = jobs(conn, schema, uuids)
        done = len(rows) == len(uuids) and all(row["state"] in states for row in rows)
        return rows if done else None

    try:
        return wait_until(settled, timeout, interval=0.05)  # type: ignore[no-any-return]
    except AssertionError:
        found = [(row["uuid"], row["state"], row["attempts"]) for row in jobs(conn, schema, uuids)]
        raise AssertionError(f"jobs not {sorted(states)} within {timeout} s: {found}") from None


def count_states(conn: Conn, schema: str) -> dict[str, int]:
    """How many rows are in each state."""
    query = sql.SQL("SELECT state, count(*) FROM {}.jobs GROUP BY state").format(
        sql.Identifier(schema)
    )
    return {str(state): int(n) for state, n in conn.execute(query).fetchall()}
