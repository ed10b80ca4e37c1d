"""A batch() that spans brokers (NOTIFYs and durable jobs) is sent all or nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dispatcher.config import Settings, reset, setup
from dispatcher.publish import (
    BrokerUnavailable,
    PublishError,
    abatch,
    aclose_connections,
    asubmit_task,
    batch,
    close_connections,
    submit_task,
)
from dispatcher.schema import QUEUE_WAKEUP_CHANNEL
from support.durable import own_schema
from support.postgres import wait_for_notifies
from support.proxy import DatabaseProxy

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """The queue's tables, refusing (at the server) the rows whose uuid starts with ``bad``."""
    with own_schema(pg_dsn) as name:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER TABLE {}.jobs ADD CHECK (uuid NOT LIKE 'bad%%')").format(
                    sql.Identifier(name)
                )
            )
        yield name


@pytest.fixture
def durable(pg_dsn: str, channel: str, schema: str) -> Iterator[Settings]:
    settings = setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": pg_dsn, "channels": [channel]},
                "pg_queue": {"queues": ["orders"], "schema": schema},
            },
        }
    )
    yield settings
    close_connections()
    reset()


@pytest.fixture
def listener(pg_dsn: str, channel: str) -> Iterator[Conn]:
    """LISTENing on the test's channel and where durable queues are woken."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        conn.execute(f"LISTEN {QUEUE_WAKEUP_CHANNEL}")
        yield conn


def stored(pg_dsn: str, schema: str) -> list[str]:
    with psycopg.connect(pg_dsn) as conn:
        query = sql.SQL("SELECT uuid FROM {}.jobs ORDER BY id").format(sql.Identifier(schema))
        return [row[0] for row in conn.execute(query)]


def mixed_batch(channel: str, connection: Conn | None = None, bad: bool = True) -> None:
    with batch(connection):
        submit_task("app.tasks.t", queue="orders", uuid="q0")
        submit_task("app.tasks.t", queue=channel, uuid="n1")
        submit_task("app.tasks.t", queue="orders", uuid="bad2" if bad else "q2")
        submit_task("app.tasks.t", queue=channel, uuid="n3")


def test_a_batch_failing_partway_leaves_nothing_sent(
    durable: Settings, pg_dsn: str, schema: str, channel: str, listener: Conn
) -> None:
    with pytest.raises(PublishError, match="refused the batch"):
        mixed_batch(channel)
    assert stored(pg_dsn, schema) == []
    assert wait_for_notifies(listener, 1, timeout=0.3) == []
    mixed_batch(channel, bad=False)  # and a good one goes whole
    assert stored(pg_dsn, schema) == ["q0", "q2"]
    received = wait_for_notifies(listener, 3)
    assert sorted(n.channel for n in received) == sorted([channel, channel, QUEUE_WAKEUP_CHANNEL])


def test_on_an_autocommit_connection_it_is_all_or_nothing_too(
    durable: Settings, pg_dsn: str, schema: str, channel: str, listener: Conn
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            mixed_batch(channel, conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert stored(pg_dsn, schema) == []
    assert wait_for_notifies(listener, 1, timeout=0.3) == []


def record_backends(pg_dsn: str, schema: str) -> sql.Composed:
    """Make every row stored in *schema*'s jobs table record its backend; the query reading them."""
    table = sql.Identifier(schema, "backends")
    function = sql.Identifier(schema, "record_backend")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (pid int)").format(table))
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN INSERT INTO {} VALUES (pg_backend_pid()); RETURN NEW; END$$"
            ).format(function, table)
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER record_backend BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(schema, "jobs"), function)
        )
    return sql.SQL("SELECT DISTINCT pid FROM {}").format(table)


def test_a_batch_spanning_brokers_opens_no_connection_of_its_own(
    durable: Settings, pg_dsn: str, schema: str, channel: str, listener: Conn
) -> None:
    """It goes on the SDK's shared connection: no new backend per batch (one per request)."""
    backends = record_backends(pg_dsn, schema)
    submit_task("app.tasks.t", queue="orders", uuid="single")  # on the shared connection
    for round in range(3):
        with batch():
            submit_task("app.tasks.t", queue="orders", uuid=f"q{round}")
            submit_task("app.tasks.t", queue=channel, uuid=f"n{round}")
    with psycopg.connect(pg_dsn) as conn:
        assert len(conn.execute(backends).fetchall()) == 1
    assert stored(pg_dsn, schema) == ["single", "q0", "q1", "q2"]
    received = wait_for_notifies(listener, 7)
    assert sorted(n.channel for n in received) == sorted([channel] * 3 + [QUEUE_WAKEUP_CHANNEL] * 4)


def test_in_asyncio_too_with_one_notify_and_a_chunked_one(
    durable: Settings, pg_dsn: str, schema: str, channel: str, listener: Conn
) -> None:
    backends = record_backends(pg_dsn, schema)

    async def send() -> None:
        try:
            await asubmit_task("app.tasks.t", queue="orders", uuid="single")
            async with abatch():  # the one NOTIFY statement
                await asubmit_task("app.tasks.t", queue="orders", uuid="q0")
                await asubmit_task("app.tasks.t", queue=channel, uuid="n0")
            async with abatch():  # a message in chunks: several NOTIFYs
                await asubmit_task("app.tasks.t", queue=channel, uuid="n1", args=["x" * 20_000])
                await asubmit_task("app.tasks.t", queue="orders", uuid="q1")
            await asubmit_task("app.tasks.t", queue=channel, uuid="last")
        finally:
            await aclose_connections()

    asyncio.run(send())
    with psycopg.connect(pg_dsn) as conn:
        assert len(conn.execute(backends).fetchall()) == 1
    assert stored(pg_dsn, schema) == ["single", "q0", "q1"]
    received: list[psycopg.Notify] = []
    while not any('"last"' in n.payload for n in received):  # sent after all the others
        more = wait_for_notifies(listener, 1)
        assert more, f"no more notifications after {received}"
        received += more
    assert sum(n.channel == QUEUE_WAKEUP_CHANNEL for n in received) == 3
    assert len([n for n in received if n.channel == channel]) > 3  # n0, n1 in chunks, last


def test_a_batch_spanning_brokers_whose_reply_is_lost_is_not_sent_again(
    pg_dsn: str, schema: str, channel: str, listener: Conn
) -> None:
    """Its rows would be skipped the second time, its NOTIFYs not: the tasks would run twice."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        brokers = {
            "pg_notify": {"conninfo": proxy.dsn, "channels": [channel]},
            "pg_queue": {"queues": ["orders"], "schema": schema},
        }
        setup({"version": 1, "brokers": brokers})
        submit_task("app.tasks.t", queue=channel, uuid="opened")  # the shared connection
        assert len(wait_for_notifies(listener, 1)) == 1
        proxy.lose_next_reply()
        with pytest.raises(BrokerUnavailable, match="may or may not have been delivered"):
            mixed_batch(channel, bad=False)
        assert stored(pg_dsn, schema) == ["q0", "q2"]
        received = wait_for_notifies(listener, 5, timeout=2)  # (3 expected: wait for more)
        tasks = [json.loads(n.payload)["uuid"] for n in received if n.channel == channel]
        assert sorted(tasks) == ["n1", "n3"]
    finally:
        close_connections()
        reset()
        proxy.down()
