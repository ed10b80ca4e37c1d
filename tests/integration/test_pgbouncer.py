"""Through a real pgbouncer, in transaction and in session mode (skipped where none is installed).

A pool of one server session: every client's transactions run on the same session, one
after the other, so that whatever a client leaves on it (a setting, a prepared statement, a
LISTEN) is met by the next, as a team running pgbouncer in production would meet it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.ctl_here import dispatcherctl
from support.durable import enqueue, job_message, migrated
from support.pgbouncer import NOT_INSTALLED, Pgbouncer, pgbouncer_binary, running_pgbouncer
from support.pgbouncer import server_sessions as sessions_of
from support.queue_rows import unique_schema

pytestmark = [
    pytest.mark.skipif(pgbouncer_binary() is None, reason=NOT_INSTALLED),
    pytest.mark.timeout(60),
]

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def transaction_pool(pg_dsn: str) -> Iterator[Pgbouncer]:
    """A pgbouncer in transaction mode with one server session, for the module."""
    with running_pgbouncer(pg_dsn, "transaction") as bouncer:
        yield bouncer


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def untouched(pg_conn: Conn) -> tuple[object, ...]:
    """What a server session holds that no client changed (the server's defaults)."""
    with psycopg.connect(pg_conn.info.dsn, prepare_threshold=None) as fresh:
        row = fresh.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
            " current_setting('search_path'), 0::bigint, ARRAY[]::text[]"
        ).fetchone()
    assert row is not None
    return tuple(row)


def pooled_config(tmp_path: Path, conninfo: str, schema: str, queue: str) -> Path:
    """A config file whose conninfo leads to a transaction-mode pool, marked so."""
    brokers = {
        "pg_notify": {
            "conninfo": conninfo,
            "channels": [f"{queue}_notify"],
            "transaction_pooler": True,
        },
        "pg_queue": {
            "conninfo": conninfo,
            "schema": schema,
            "queues": [queue],
            "transaction_pooler": True,
        },
    }
    path = tmp_path / "dispatcher.yml"
    path.write_text(json.dumps({"version": 1, "brokers": brokers}), encoding="utf-8")
    return path


def test_queue_commands_leave_nothing_on_the_pools_session(
    transaction_pool: Pgbouncer, pg_conn: Conn, schema: str, channel: str, tmp_path: Path
) -> None:
    """``retry`` of many jobs prepared its statement on the pool's session (left there for
    the next client, whose psycopg names its own ``_pg3_0`` too), and ``jobs``, ``purge``
    and ``cancel-job`` set their ``lock_timeout`` (``--timeout``) on it: another client's
    statements were then cancelled after that long waiting for a lock."""
    messages = [job_message("record", n, on_duplicate="discard") for n in range(8)]
    enqueue(pg_conn, schema, channel, messages)
    pg_conn.execute(
        sql.SQL(
            "UPDATE {}.jobs SET state = 'failed', outcome = 'error', finished_at = now()"
        ).format(sql.Identifier(schema))
    )
    config = pooled_config(tmp_path, transaction_pool.dsn, schema, channel)
    commands = [
        ("jobs", "--timeout", "7"),
        ("purge", "--state", "done", "--older-than", "0", "--timeout", "7"),
        ("cancel-job", "--task", "nothing.here", "--timeout", "7"),
    ]
    retried = dispatcherctl(config, "retry", "--failed")
    assert "retried 8 failed jobs" in retried.stdout, retried
    for command in commands:
        done = dispatcherctl(config, *command)
        assert done.returncode == 0, done
    assert sessions_of(transaction_pool) == [untouched(pg_conn)]
