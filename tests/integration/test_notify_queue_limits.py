"""When the server cannot take a NOTIFY: one blocked (a committing NOTIFY waits for a
synchronous standby, holding the cluster-wide lock every other NOTIFY needs), or the
cluster-wide NOTIFY queue full (a listener that never reads).

The service's listener keeps its one connection (it neither leaves sessions behind nor
reconnects over and over), and durable jobs are stored still (their wake-up NOTIFY is best
effort: polling finds them). These tests disturb their whole cluster, so they have one of
their own: an embedded PostgreSQL with a small NOTIFY queue (``max_notify_queue_pages``,
PostgreSQL 17 and later), fast to fill.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import psycopg
import pytest

from dispatcher.config import PgNotifyBroker as PgNotifySettings
from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, submit_task
from dispatcher.schema import sql_publisher, sql_queue_publisher
from dispatcher.server.brokers.pg_notify.broker import PgNotifyBroker
from dispatcher.server.brokers.pg_queue import sql as queue_sql
from dispatcher.server.origin import Origin
from dispatcher.server.stats import ServiceStats
from support.durable import own_schema
from support.postgres import EmbeddedServer

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedServer]:
    """An embedded PostgreSQL these tests may reconfigure and restart (a NOTIFY queue of 64
    pages, 512 kB, where the server has the setting)."""
    server = EmbeddedServer()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            if conn.info.server_version >= 170000:
                conn.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        server.stop()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_pg(own_server: EmbeddedServer) -> str:
    """The DSN of :func:`own_server`."""
    return own_server.dsn


def sessions(dsn: str, application_name: str) -> list[int]:
    """The pids of the server sessions named *application_name*."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
            (application_name,),
        ).fetchall()
    return [row[0] for row in rows]


def poll(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


async def apoll(condition: Callable[[], bool], timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


@pytest.fixture
def blocked_notify(own_pg: str) -> Iterator[None]:
    """NOTIFY blocked cluster-wide: a committing NOTIFY waits for a synchronous standby that
    does not exist, holding the lock every NOTIFY takes to commit."""
    with psycopg.connect(own_pg, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'no_such_standby'")
        admin.execute("SELECT pg_reload_conf()")
        poll(lambda: _setting(own_pg, "synchronous_standby_names") == "no_such_standby")
        name = f"blocker_{uuid.uuid4().hex[:8]}"
        blocker = threading.Thread(target=_notify_once, args=(own_pg, name), daemon=True)
        blocker.start()
        try:
            poll(lambda: _waiting_for_standby(own_pg, name))
            yield
        finally:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")
            blocker.join(20)


def _setting(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def _notify_once(dsn: str, application_name: str) -> None:
    with psycopg.connect(dsn, autocommit=True, application_name=application_name) as conn:
        # With a write: a transaction that wrote nothing else does not wait for the standby.
        conn.execute(
            "DO $$BEGIN CREATE TEMP TABLE written (); NOTIFY somebody_else, 'stuck'; END$$"
        )


def _waiting_for_standby(dsn: str, application_name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    return row is not None and row[0] == "SyncRep"


@pytest.fixture
def full_notify_queue(own_server: EmbeddedServer, own_pg: str) -> Iterator[None]:
    """The cluster's NOTIFY queue full: a listener sits in a transaction, never reading.

    On a server started afresh: one whose queue was full once counts it full again long
    before (it gives back the space read in segments of 32 pages, half of this queue).
    """
    own_server.stop()
    own_server.start()
    with psycopg.connect(own_pg, autocommit=True) as lagging:
        if lagging.info.server_version < 170000:
            pytest.skip("max_notify_queue_pages (PostgreSQL 17): the queue is 8 GB before")
        lagging.execute("LISTEN never_read")
        lagging.execute("BEGIN")
        lagging.execute("SELECT 1")
        with psycopg.connect(own_pg, autocommit=True) as filler:
            payload = "x" * 7900
            for n in range(10_000):
                try:
                    filler.execute("SELECT pg_notify('never_read', %s)", (f"{payload}{n}",))
                except psycopg.errors.ProgramLimitExceeded:
                    break
            else:
                pytest.fail("the NOTIFY queue never filled")
        try:
            yield
        finally:
            lagging.execute("ROLLBACK")


def listening(dsn: str, channel: str, stats: ServiceStats) -> PgNotifyBroker:
    settings = PgNotifySettings(
        conninfo=dsn, channels=(channel,), self_check_interval=0.1, self_check_timeout=0.3
    )
    return PgNotifyBroker(settings, f"dispatcher-test-{uuid.uuid4().hex[:12]}", stats)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_blocked_self_check_leaves_no_session_behind_and_keeps_the_connection(
    own_pg: str, blocked_notify: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A self-check whose NOTIFY the server holds up is cancelled, on the connection that
    stays: before, the listener closed it and reconnected, and its server session stayed,
    waiting for the lock, one more at every self-check until the cluster ran out of them."""
    stats = ServiceStats()
    channel = f"ch_{uuid.uuid4().hex[:12]}"
    broker = listening(own_pg, channel, stats)
    received: list[tuple[str, Origin]] = []
    name = broker.application_name
    with caplog.at_level(logging.WARNING, logger="dispatcher.listener"):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broker.run, lambda text, origin: received.append((text, origin)))
            await apoll(lambda: stats.listener_connects == 1)
            first = await anyio.to_thread.run_sync(sessions, own_pg, name)
            # Several self-checks' time (each blocked, then cancelled).
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert await anyio.to_thread.run_sync(sessions, own_pg, name) == first
                await anyio.sleep(0.2)
            assert stats.listener_connects == 1
            tasks.cancel_scope.cancel()
    assert len(first) == 1
    assert "held up" in caplog.text
    assert "synchronous_standby_names" in caplog.text
    poll(lambda: sessions(own_pg, name) == [])  # closed on the way out, nothing left behind


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_self_check_refused_by_a_full_notify_queue_keeps_the_connection(
    own_pg: str, full_notify_queue: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The server refusing the self-check's NOTIFY (its queue is full) answered: the
    connection is fine. Before, it was replaced at every self-check, and what was sent while
    it was being replaced was lost."""
    stats = ServiceStats()
    channel = f"ch_{uuid.uuid4().hex[:12]}"
    broker = listening(own_pg, channel, stats)
    with caplog.at_level(logging.WARNING, logger="dispatcher.listener"):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broker.run, lambda text, origin: None)
            await apoll(lambda: stats.listener_connects == 1)
            first = await anyio.to_thread.run_sync(sessions, own_pg, broker.application_name)
            await anyio.sleep(1.5)  # many self-checks
            assert stats.listener_connects == 1
            assert stats.listener_failures == 0
            again = await anyio.to_thread.run_sync(sessions, own_pg, broker.application_name)
            assert again == first
            tasks.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if "NOTIFY queue" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not at every self-check
    assert "pg_notification_queue_usage" in warnings[0]


@pytest.fixture
def durable_settings(own_pg: str) -> Iterator[tuple[str, str]]:
    """Publishing to the durable queue ``orders`` (and the NOTIFY channel ``plain``)."""
    with own_schema(own_pg) as schema:
        setup(
            {
                "version": 1,
                "brokers": {
                    "pg_notify": {"conninfo": own_pg, "channels": ["plain"]},
                    "pg_queue": {"queues": ["orders"], "schema": schema},
                },
            }
        )
        try:
            yield own_pg, schema
        finally:
            close_connections()
            reset()


def stored(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT task FROM {}.jobs ORDER BY id").format(
                psycopg.sql.Identifier(schema)
            )
        ).fetchall()
    return [row[0] for row in rows]


def test_durable_jobs_are_stored_while_the_notify_queue_is_full(
    full_notify_queue: None, durable_settings: tuple[str, str]
) -> None:
    """Their wake-up NOTIFY is skipped (polling finds the jobs), where it made the store fail,
    and the caller's own transaction with it, at COMMIT."""
    dsn, schema = durable_settings
    submit_task("app.first", queue="orders")
    with psycopg.connect(dsn) as conn:
        submit_task("app.second", queue="orders", connection=conn)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql_queue_publisher().encode())
        conn.execute(
            "SELECT dispatcher_enqueue('orders', 'app.third', '[]', '{}', '{}', %s)", (schema,)
        )
        tick = queue_sql.Statements.for_schema(schema).submit_tick
        conn.execute(
            tick,
            {
                "task": "app.fourth",
                "ticks": [1],
                "uuid": str(uuid.uuid4()),
                "queue": "orders",
                "message": '{"task": "app.fourth"}',
                "max_attempts": 1,
                "delay": 0,
                "on_duplicate": None,
                "dup_key": None,
                "channel": "dispatcher_queue_wakeup",
            },
        )
    assert stored(dsn, schema) == ["app.first", "app.second", "app.third", "app.fourth"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_notification_queue_usage()").fetchone()
    assert row is not None
    assert row[0] >= 0.5  # (so full all along that a wake-up would have been sent otherwise)


def test_dispatcher_submit_fails_the_callers_commit_while_the_notify_queue_is_full(
    full_notify_queue: None, own_pg: str
) -> None:
    """The call itself succeeds (a NOTIFY is queued at COMMIT); the COMMIT then fails with
    the server's error, and the caller's other changes roll back with it: never a commit
    that reports success for a task that was not sent."""
    with own_schema(own_pg) as schema, psycopg.connect(own_pg) as conn:
        conn.execute(psycopg.sql.SQL("SET search_path = {}").format(psycopg.sql.Identifier(schema)))
        conn.execute(sql_publisher().encode())
        conn.commit()
        conn.execute("CREATE TABLE orders (n integer)")
        conn.commit()
        conn.execute("INSERT INTO orders VALUES (1)")
        conn.execute("SELECT dispatcher_submit('plain', 'app.small')")
        conn.execute(
            "SELECT dispatcher_submit('plain', 'app.large', jsonb_build_array(repeat('x', 50000)))"
        )
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="too many notifications"):
            conn.commit()
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
