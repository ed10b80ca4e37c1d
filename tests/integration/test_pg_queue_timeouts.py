"""Statements the server cancels (``statement_timeout``) on the pg_queue broker's connections.

Every working connection (claims, renewals, acknowledgements, sweeps) has a timeout, so a
statement stuck behind a lock fails instead of hanging the broker; it is retried like any
other failure and the connection is kept. The tests hold the jobs table in ACCESS
EXCLUSIVE mode for longer than a short timeout, given in the conninfo (which the broker's
own default never overrides).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.server.brokers.pg_queue.database import STATEMENT_TIMEOUT, Connection, QueueDatabase
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


@contextmanager
def jobs_locked(dsn: str, schema: str) -> Iterator[None]:
    """Hold the jobs table in ACCESS EXCLUSIVE mode (nobody reads or writes it) meanwhile."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL("LOCK TABLE {}.jobs IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema))
        )
        yield
        conn.rollback()


async def nothing(conn: Connection) -> None:
    """An ``on_open`` that checks nothing."""


def session_settings(db: QueueDatabase) -> tuple[int, str, str]:
    """The backend pid and the two timeouts of *db*'s connection (opening it if needed)."""

    async def read() -> tuple[int, str, str]:
        rows = await db.fetch(
            b"SELECT pg_backend_pid(), current_setting('statement_timeout'),"
            b" current_setting('idle_in_transaction_session_timeout')",
            {},
        )
        pid, statement, idle = rows[0]
        return int(pid), str(statement), str(idle)

    return anyio.run(read)


def test_each_working_connection_gets_a_statement_timeout(pg_dsn: str) -> None:
    db = QueueDatabase(pg_dsn, "pg-queue-timeouts", nothing)
    try:
        _pid, statement, idle = session_settings(db)
        plans = anyio.run(db.fetch, b"SELECT current_setting('plan_cache_mode')", {})
    finally:
        anyio.run(db.close)
    assert statement == idle == f"{round(STATEMENT_TIMEOUT)}s"
    assert 0 < STATEMENT_TIMEOUT < 30  # below the claim loop's own limit
    assert plans == [("force_generic_plan",)]  # its statements are planned once


def test_behind_a_transaction_pooler_nothing_is_set_nor_prepared(pg_dsn: str) -> None:
    """``transaction_pooler: true``: a SET would land on a session other clients share."""
    db = QueueDatabase(pg_dsn, "pg-queue-timeouts", nothing, pooled=True)
    statement = b"SELECT current_setting('plan_cache_mode'), count(*) FROM pg_prepared_statements"
    try:
        _pid, timeout, _idle = session_settings(db)
        runs = [anyio.run(db.fetch, statement, {}) for _ in range(8)]
    finally:
        anyio.run(db.close)
    assert timeout == "0"
    assert runs[-1] == [("auto", 0)]  # the server's defaults; run 8 times, never prepared


def test_a_lost_prepared_statement_turns_preparing_off(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a pooler in transaction mode does to a prepared statement: the service notices,
    says what to set, and goes on without preparing."""
    opened: list[Connection] = []

    async def keep(conn: Connection) -> None:
        opened.append(conn)

    db = QueueDatabase(pg_dsn, "pg-queue-timeouts", keep)
    statement = b"SELECT count(*) FROM pg_prepared_statements"

    async def scenario() -> list[Any]:
        for _ in range(6):
            await db.fetch(statement, {})  # prepared by now (psycopg prepares at the 5th)
        # Gone from the server session, as a pooler makes it, not from psycopg's own record.
        names = await (
            await opened[0].execute("SELECT name FROM pg_prepared_statements")
        ).fetchall()
        for (name,) in names:
            await opened[0].execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            await db.fetch(statement, {})
        return [await db.fetch(statement, {}) for _ in range(8)]

    try:
        after = anyio.run(scenario)
    finally:
        anyio.run(db.close)
    assert after[-1] == [(0,)]  # a new connection, which prepares nothing
    assert len(opened) == 2
    assert "set brokers.pg_queue.transaction_pooler: true" in caplog.text
    _pid, timeout, _idle = session_settings(db)  # its session settings are still made
    anyio.run(db.close)
    assert timeout == f"{round(STATEMENT_TIMEOUT)}s"


def test_a_timeout_set_in_the_conninfo_wins(pg_dsn: str) -> None:
    given = make_conninfo(pg_dsn, options="-c statement_timeout=1234")
    db = QueueDatabase(given, "pg-queue-timeouts", nothing, statement_timeout=0.5)
    try:
        _pid, statement, idle = session_settings(db)
    finally:
        anyio.run(db.close)
    assert (statement, idle) == ("1234ms", "500ms")


def test_a_statement_cancelled_by_its_timeout_fails_and_the_connection_is_kept(
    pg_dsn: str, schema: str
) -> None:
    db = QueueDatabase(pg_dsn, "pg-queue-timeouts", nothing, statement_timeout=0.3)
    count = sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema))
    query = count.as_bytes(None)
    try:
        before, _, _ = session_settings(db)
        with jobs_locked(pg_dsn, schema), pytest.raises(psycopg.errors.QueryCanceled):
            anyio.run(db.fetch, query, {})
        assert anyio.run(db.fetch, query, {}) == [(0,)]
        after, _, _ = session_settings(db)
    finally:
        anyio.run(db.close)
    assert after == before  # the same session: a timeout is not a lost connection


def test_a_service_whose_statements_time_out_goes_on_and_loses_nothing(
    start_service: Any, pg_dsn: str, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    dsn = make_conninfo(pg_dsn, options="-c statement_timeout=300")
    # A long lease: the job running through the lock stays this service's own.
    service: ServiceProcess = start_service(queue_config(dsn, schema, channel, lease=30))
    through = enqueue(
        pg_conn, schema, channel, [job_message("sleep_then_record", evidence.path, 1, "through")]
    )
    evidence.wait_for(1)
    with jobs_locked(pg_dsn, schema):
        # Claims, then the outcome of the job that ends meanwhile, are cancelled by the server.
        service.wait_for_log(r"cannot claim jobs: canceling statement due to statement timeout")
        service.wait_for_log(r"outcomes? not recorded yet \(canceling statement due to statement")
        assert evidence.wait_for(2)[1]["event"] == "end"
    after = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "after")])
    rows = wait_for_states(pg_conn, schema, through + after, {"done"})
    assert [(row["attempts"], row["outcome"]) for row in rows] == [(1, "ok"), (1, "ok")]
    wait_until(lambda: len(evidence.records()) == 3, timeout=10)
    assert service.process is not None
    assert service.process.poll() is None  # still running
    assert "lost the connection" not in service.log  # a cancelled statement is not a lost one
