"""The pg_queue broker's connections under a role's or a database's session settings.

``idle_session_timeout`` ends sessions that wait between statements, as the queue's
connections do; ``default_transaction_isolation = 'serializable'`` makes statements fail
with serialization errors that read committed never meets. Neither may cost the service
its connections, nor hold up the sweep that brings a dead service's jobs back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.server.brokers.pg_queue.database import Connection, QueueDatabase
from dispatcher.server.ratelimit import flush_suppressed
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


@pytest.fixture
def role(pg_conn: Conn, schema: str) -> Iterator[str]:
    """A role of its own (a superuser: no grants to make), dropped at the end."""
    name = f"role_{schema}"
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        pg_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
        )
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def set_on_role(conn: Conn, role: str, setting: str, value: str) -> None:
    conn.execute(
        sql.SQL("ALTER ROLE {} SET {} = {}").format(
            sql.Identifier(role), sql.Identifier(setting), sql.Literal(value)
        )
    )


async def nothing(conn: Connection) -> None:
    """An ``on_open`` that checks nothing."""


def test_the_queue_connections_keep_no_idle_timeout_and_read_committed(
    pg_conn: Conn, pg_dsn: str, role: str
) -> None:
    set_on_role(pg_conn, role, "idle_session_timeout", "300ms")
    set_on_role(pg_conn, role, "default_transaction_isolation", "serializable")
    db = QueueDatabase(make_conninfo(pg_dsn, user=role), "pg-queue-sessions", nothing)
    query = (
        b"SELECT pg_backend_pid(), current_setting('idle_session_timeout'),"
        b" current_setting('transaction_isolation')"
    )
    try:
        pid, idle, isolation = anyio.run(db.fetch, query, {})[0]
        assert (idle, isolation) == ("0", "read committed")
        with psycopg.connect(pg_dsn, autocommit=True) as other:  # waits longer than 300 ms
            wait_until(lambda: other.execute("SELECT pg_sleep(0.5)").fetchone(), timeout=5)
        assert anyio.run(db.fetch, query, {})[0][0] == pid  # the same session
    finally:
        anyio.run(db.close)


def test_a_connection_ended_while_idle_is_logged_with_the_servers_reason(
    pg_conn: Conn, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server says why it ends a connection (pg_terminate_backend(): SQLSTATE 57P01):
    the line names that, not a guessed idle timeout; the losses after the first are counted
    and the count logged (they went to DEBUG, unseen, 2 lines for 120 of them)."""
    caplog.set_level(logging.DEBUG, logger="dispatcher.pg_queue")
    db = QueueDatabase(pg_dsn, "pg-queue-farewell", nothing)
    query = b"SELECT pg_backend_pid()"

    def terminate(pid: int) -> None:
        pg_conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
        wait_until(lambda: pg_conn.execute(gone, [pid]).fetchone() == (0,), timeout=10)

    try:
        for _ in range(3):
            pid = anyio.run(db.fetch, query, {})[0][0]
            terminate(pid)  # while the connection is idle
        assert anyio.run(db.fetch, query, {})[0][0] != pid  # replaced before use
        flush_suppressed(now=True)
    finally:
        anyio.run(db.close)
    said = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "dispatcher.pg_queue" and "was ended while idle" in r.getMessage()
    ]
    reason = "terminating connection due to administrator command (SQLSTATE 57P01)"
    levels = [logging.INFO, logging.DEBUG, logging.DEBUG, logging.INFO]
    assert [level for level, _ in said] == levels, said
    assert said[0][1].startswith(f"a connection was ended while idle by the server: {reason};")
    assert all(reason in line and "idle timeout" not in line for _, line in said), said
    assert said[-1][1].startswith("2 similar lines suppressed (the last: a connection was ended")


@pytest.mark.parametrize("pooled", [False, True], ids=["direct", "transaction_pooler"])
def test_a_dead_services_jobs_come_back_in_time_under_an_idle_session_timeout(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    role: str,
    evidence: Evidence,
    pooled: bool,
) -> None:
    """The surviving service's role ends sessions idle for 0.5 s (shorter than a third of
    the lease, its renewals' period). Its connections were ended between two statements:
    each came back, and each time held sweeps for a lease, so that the dead service's job
    was not taken back for minutes. With ``transaction_pooler: true`` the service sets
    nothing on its sessions (a pooler's): it replaces a connection ended while idle."""
    lease = 3
    set_on_role(pg_conn, role, "idle_session_timeout", "500ms")
    config = queue_config(pg_dsn, schema, channel, lease=lease, prefetch=0)
    config["service"]["node_id"] = "idle-a"
    dying = start_service(config)
    [job] = enqueue(pg_conn, schema, channel, [job_message("sleep_then_record", evidence.path, 30)])
    evidence.wait_for(1)  # running on the service that dies
    busy = f"{channel}_busy"  # the survivor's own long job: its leases are renewed all along
    config = queue_config(
        make_conninfo(pg_dsn, user=role), schema, channel, lease=lease, prefetch=0
    )
    config["brokers"]["pg_queue"].update(queues=[channel, busy], transaction_pooler=pooled)
    config["service"].update(node_id="idle-b", pool={"min_workers": 2, "max_workers": 2})
    survivor = start_service(config)
    enqueue(pg_conn, schema, busy, [job_message("sleep_then_record", evidence.path, 60)])
    evidence.wait_for(2)
    dying.kill_everything()  # SIGKILL: its job's lease is no longer renewed
    # It runs again on the survivor within about 1.5 x lease (swept, claimed, started).
    evidence.wait_for(3, timeout=4 * lease)
    [row] = wait_for_states(pg_conn, schema, [job], {"running"})
    assert (row["node_id"], row["attempts"]) == ("idle-b", 2)
    if not pooled:
        assert "reconnecting" not in survivor.log, survivor.log


def test_serialization_failures_and_deadlocks_are_retried_on_the_same_connection(
    pg_conn: Conn, pg_dsn: str, schema: str
) -> None:
    """A statement that a serialization failure or a deadlock rolled back (as a role's
    ``serializable`` default makes the queue's statements meet) is sent again; the
    connection was taken for lost, closed, opened again, and the statement not retried."""
    pg_conn.execute(
        sql.SQL(
            """
            CREATE SEQUENCE {schema}.fails;
            CREATE FUNCTION {schema}.fail_twice() RETURNS integer LANGUAGE plpgsql AS $$
            DECLARE n bigint := nextval({sequence});
            BEGIN
                IF n = 1 THEN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END IF;
                IF n = 2 THEN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END IF;
                RETURN n;
            END $$
            """
        ).format(schema=sql.Identifier(schema), sequence=sql.Literal(f'"{schema}".fails'))
    )
    opened: list[Connection] = []

    async def count(conn: Connection) -> None:
        opened.append(conn)

    db = QueueDatabase(pg_dsn, "pg-queue-sessions", count)
    statement = sql.SQL("SELECT {}.fail_twice()").format(sql.Identifier(schema))
    try:
        rows = anyio.run(db.fetch, statement.as_string(pg_conn).encode(), {})
    finally:
        anyio.run(db.close)
    assert rows == [(3,)]
    assert len(opened) == 1
