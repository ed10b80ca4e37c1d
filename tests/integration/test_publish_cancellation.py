"""Async publishes cancelled as a web app's are (a client gone, a request's timeout, a
cancel scope), over real PostgreSQL: what was sent, what was stored, what is left usable.

Async-only: the sync API has no cancellation at an await point (its interruptions are
tested in ``test_publish_runtimes.py``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import Settings, reset, setup
from dispatcher.publish import BrokerUnavailable, Submission, aclose_connections, task
from support import tasks
from support.durable import own_schema
from support.postgres import wait_for_notifies

Conn = psycopg.Connection[Any]

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@task(queue="orders")
def ship(order: int) -> None:
    """A task of a durable queue."""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The event loop the tests run in: psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture
def app_name(channel: str) -> str:
    """The ``application_name`` of the SDK's own connections in the test."""
    return f"pub_{channel}"


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, with the queue's tables."""
    with own_schema(pg_dsn) as name:
        yield name


@pytest.fixture
async def durable(pg_dsn: str, channel: str, schema: str, app_name: str) -> AsyncIterator[Settings]:
    """pg_notify on this test's channel and the durable queue ``orders``, the SDK's own
    connections named *app_name*."""
    conninfo = make_conninfo(pg_dsn, application_name=app_name)
    settings = setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": conninfo, "channels": [channel]},
                "pg_queue": {"queues": ["orders"], "schema": schema},
            },
        }
    )
    yield settings
    await aclose_connections()
    reset()


def stored_orders(pg_conn: Conn, schema: str) -> list[int]:
    query = sql.SQL("SELECT message FROM {}.jobs ORDER BY id").format(sql.Identifier(schema))
    return [json.loads(message)["args"][0] for (message,) in pg_conn.execute(query)]


def sdk_connections(pg_conn: Conn, app_name: str) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    [(count,)] = pg_conn.execute(query, (app_name,)).fetchall()
    return int(count)


def received_through(listener: Conn, last: str) -> list[dict[str, Any]]:
    """The messages received up to the one whose uuid is *last* (and a moment after)."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not any(message["uuid"] == last for message in received):
        assert time.monotonic() < deadline, f"{last} never came"
        received += [json.loads(n.payload) for n in wait_for_notifies(listener, 1000, 0.3)]
    return received


def locked_jobs(pg_dsn: str, schema: str) -> Conn:
    """A connection holding the lock of the jobs table: a store waits for it, under way."""
    locker = psycopg.connect(pg_dsn)
    locker.execute(
        sql.SQL("LOCK TABLE {}.jobs IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema))
    )
    return locker


async def test_publishes_cancelled_at_random_moments_are_each_sent_once_or_not_at_all(
    durable: Settings, listener: Conn, pg_conn: Conn, app_name: str
) -> None:
    """Hundreds of requests publishing at once on one loop, some cancelled anywhere in the
    call: each one told it was sent is received once, as it was made; no message is mixed
    with another or sent twice; the connection is left usable and is the loop's only one."""
    chance = random.Random(20261201)
    calls = [asyncio.create_task(tasks.add.adelay(n, "x" * (n % 40))) for n in range(300)]

    async def cancel_some() -> None:
        for _ in range(100):
            await asyncio.sleep(chance.random() / 1000)
            chance.choice(calls).cancel()

    await asyncio.gather(cancel_some(), asyncio.gather(*calls, return_exceptions=True))
    failures = [c.exception() for c in calls if not c.cancelled() and c.exception() is not None]
    assert failures == []
    sent: list[Submission] = [c.result() for c in calls if not c.cancelled()]
    last = await tasks.add.adelay(300, "x" * (300 % 40))
    received = received_through(listener, last.uuid)
    by_uuid = {message["uuid"]: message for message in received}
    assert len(by_uuid) == len(received)  # none twice
    for submission in [*sent, last]:
        n, text = by_uuid[submission.uuid]["args"]
        assert text == "x" * (n % 40)
        assert submission.message["args"] == [n, text]
    assert len(received) <= len(sent) + 1 + 100  # a cancelled one may have been sent
    assert sdk_connections(pg_conn, app_name) == 1


async def test_a_store_cancelled_while_under_way_stores_nothing_and_the_next_one_goes_through(
    durable: Settings, pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    """A request's timeout while its store waits for a lock: psycopg cancels the statement,
    which stores nothing; the SDK's connection serves the next call."""
    locker = locked_jobs(pg_dsn, schema)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await ship.adelay(1)
    finally:
        locker.close()
    await ship.adelay(2)
    assert stored_orders(pg_conn, schema) == [2]


async def test_a_store_cancelled_in_the_callers_transaction_leaves_it_aborted(
    durable: Settings, pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    """Cancelled with ``connection=`` while its statement ran: the caller's transaction is
    aborted (its statement was cancelled), says so to the next submission, and stores
    nothing; the cancellation, let out of the transaction block, rolls it back."""
    async with await AsyncConnection.connect(pg_dsn) as conn:
        seen: list[str] = []

        async def request() -> None:
            async with conn.transaction():
                try:
                    async with asyncio.timeout(0.3):
                        await ship.aapply_async(args=[1], connection=conn)
                finally:
                    seen.append(conn.info.transaction_status.name)
                    try:
                        await ship.aapply_async(args=[2], connection=conn)
                    except BrokerUnavailable as exc:
                        seen.append(str(exc))

        locker = locked_jobs(pg_dsn, schema)
        try:
            with pytest.raises(TimeoutError):
                await request()
        finally:
            locker.close()
        assert seen[0] == "INERROR"
        assert "transaction is aborted" in seen[1]
        await ship.aapply_async(args=[3], connection=conn)
        await conn.commit()
    assert stored_orders(pg_conn, schema) == [3]


async def test_a_cancel_repeated_while_psycopg_cancels_the_statement_leaves_no_broken_connection(
    durable: Settings, pg_dsn: str, pg_conn: Conn, schema: str, app_name: str
) -> None:
    """anyio's cancel scopes cancel again and again: psycopg, interrupted while it waits for
    the statement's cancel, closes the connection. The next call opens another."""
    locker = locked_jobs(pg_dsn, schema)
    try:
        with anyio.move_on_after(0.3) as scope:
            await ship.adelay(1)
        assert scope.cancelled_caught
    finally:
        locker.close()
    second = await ship.adelay(2)
    assert 2 in stored_orders(pg_conn, schema)  # (the first may be stored: see the docs)
    assert second.message["args"] == [2]
    assert sdk_connections(pg_conn, app_name) == 1
