"""The pg_notify broker on its own, against a real PostgreSQL: what it delivers, and how.

It reads notifications straight from the connection, many per wake-up: every payload must
still arrive once, whole, in order, and the self-check's own notifications never.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import PgNotifyBroker as PgNotifySettings
from dispatcher.server.brokers.pg_connections import open_connection
from dispatcher.server.brokers.pg_notify.broker import PgNotifyBroker
from dispatcher.server.brokers.pg_notify.drain import Drain
from dispatcher.server.origin import Origin
from dispatcher.server.stats import ServiceStats

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Received = list[tuple[str, Origin]]


def listening(
    pg_dsn: str, channels: list[str], stats: ServiceStats, self_check_interval: float = 30
) -> tuple[PgNotifyBroker, Received]:
    """A broker on *channels*, and the list it is to deliver into."""
    settings = PgNotifySettings(
        conninfo=pg_dsn, channels=tuple(channels), self_check_interval=self_check_interval
    )
    return PgNotifyBroker(settings, "dispatcher-test", stats), []


async def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def notify_all(pg_dsn: str, notifications: list[tuple[str, str]]) -> None:
    """Send every notification in one transaction: they arrive as one burst."""
    with psycopg.connect(pg_dsn) as conn:
        for channel, payload in notifications:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def test_a_burst_of_small_and_large_payloads_arrives_whole_and_in_order(
    pg_dsn: str, channel: str
) -> None:
    other = f"{channel}_b"
    stats = ServiceStats()
    broker, received = listening(pg_dsn, [channel, other], stats)
    sent = [
        (channel if n % 3 else other, json.dumps({"n": n, "pad": "x" * (n * 37 % 7_900)}))
        for n in range(1_500)  # over MAX_PER_TURN: the broker gives other tasks turns
    ]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.run, lambda text, origin: received.append((text, origin)))
        await wait_until(lambda: stats.listener_connects == 1)
        await anyio.to_thread.run_sync(notify_all, pg_dsn, sent)
        # A last notification, sent after the burst: once it is in, all before it are.
        await anyio.to_thread.run_sync(notify_all, pg_dsn, [(channel, "end")])
        await wait_until(lambda: bool(received) and received[-1][0] == "end")
        tasks.cancel_scope.cancel()
    assert [(origin.channel, text) for text, origin in received] == [*sent, (channel, "end")]
    assert {origin.broker for _, origin in received} == {"pg_notify"}


async def test_self_checks_go_on_between_notifications_and_are_never_delivered(
    pg_dsn: str, channel: str
) -> None:
    stats = ServiceStats()
    broker, received = listening(pg_dsn, [channel], stats, self_check_interval=0.05)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.run, lambda text, origin: received.append((text, origin)))
        await wait_until(lambda: stats.listener_connects == 1)
        for batch in range(10):
            notes = [(channel, f"{batch}-{n}") for n in range(50)]
            await anyio.to_thread.run_sync(notify_all, pg_dsn, notes)
            await anyio.sleep(0.03)
        await wait_until(lambda: len(received) >= 500 and stats.self_checks >= 3)
        tasks.cancel_scope.cancel()
    assert [text for text, _ in received] == [f"{b}-{n}" for b in range(10) for n in range(50)]
    assert {origin.channel for _, origin in received} == {channel}
    assert stats.listener_failures == 0


async def test_a_notification_psycopg_reads_during_a_statement_is_delivered(
    pg_dsn: str, channel: str
) -> None:
    stats = ServiceStats()
    broker, received = listening(pg_dsn, [channel], stats)

    def deliver(text: str, origin: Origin) -> None:
        received.append((text, origin))

    async with await open_connection(pg_dsn, "dispatcher-test") as conn:
        drain = Drain(conn, broker.check_channel, broker._origins, deliver)
        conn.add_notify_handler(drain.take)
        await broker._listen(conn)
        # Our own NOTIFY comes back before the statement ends: psycopg reads it.
        await conn.execute("SELECT pg_notify(%s, 'during')", (channel,))
        assert [(text, origin.channel) for text, origin in received] == [("during", channel)]
        await conn.execute("SELECT pg_notify(%s, 'token')", (broker.check_channel,))
        with anyio.fail_after(5):
            while drain.check_token != "token":
                drain.run()
                await drain.wait()
    assert [(text, origin.channel) for text, origin in received] == [("during", channel)]


def terminate(pg_dsn: str, pid: int) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_a_broken_connection_leaves_its_socket_number_to_whoever_gets_it_next(
    pg_dsn: str, channel: str
) -> None:
    # libpq closes the socket of a connection it finds broken; a socket opened before the
    # serving task resumes may get the same number, and must be watchable.
    broker, _ = listening(pg_dsn, [channel], ServiceStats())
    loop = asyncio.get_running_loop()
    readable = anyio.Event()
    first, second = socket.socketpair()
    async with await open_connection(pg_dsn, "dispatcher-test") as conn:
        drain = Drain(conn, broker.check_channel, broker._origins, lambda *_: None)
        await broker._listen(conn)
        fileno = drain.fileno
        try:
            with drain.watching():
                await anyio.to_thread.run_sync(terminate, pg_dsn, conn.info.backend_pid)
                with anyio.fail_after(10):
                    await drain.failed.wait()
                with pytest.raises(OSError, match="Bad file descriptor"):
                    os.fstat(fileno)  # closed by libpq
                os.dup2(first.fileno(), fileno)  # the number is taken again
                loop.add_reader(fileno, readable.set)
                second.send(b"x")
                with anyio.fail_after(5):
                    await readable.wait()
            # Leaving the block left the other socket's reader alone.
            assert loop.remove_reader(fileno)
        finally:
            loop.remove_reader(fileno)
            with contextlib.suppress(OSError):
                os.close(fileno)
            first.close()
            second.close()
    with pytest.raises(psycopg.OperationalError):
        drain.raise_failure()


async def test_a_role_whose_idle_sessions_time_out_keeps_its_listener(
    pg_dsn: str, channel: str, pg_conn: psycopg.Connection[Any]
) -> None:
    """A DBA's ``idle_session_timeout`` on the service's role: a LISTEN session waits by
    nature, and was cut every few hundred milliseconds (most tasks lost)."""
    role = f"idle_{channel}"[:63]
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        pg_conn.execute(
            sql.SQL("ALTER ROLE {} SET idle_session_timeout = '300ms'").format(sql.Identifier(role))
        )
        stats = ServiceStats()
        broker, received = listening(make_conninfo(pg_dsn, user=role), [channel], stats)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broker.run, lambda text, origin: received.append((text, origin)))
            await wait_until(lambda: stats.listener_connects == 1)
            await anyio.sleep(1.0)  # idle for more than three of the role's timeouts
            await anyio.to_thread.run_sync(notify_all, pg_dsn, [(channel, "after a while")])
            await wait_until(lambda: bool(received))
            tasks.cancel_scope.cancel()
        assert [text for text, _ in received] == ["after a while"]
        assert (stats.listener_connects, stats.listener_failures) == (1, 0)
    finally:
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
