"""Hostile inputs to the publisher SDK, over real PostgreSQL, sync and async.

A string PostgreSQL cannot hold (a NUL character, a lone surrogate) is refused before
anything is sent, or simply matches no job; the caller's own connection, closed or in an
aborted transaction, is refused with an error saying so, and its transaction left as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg.pq import Format, TransactionStatus

from dispatcher.config import Settings, reset, setup
from dispatcher.control import acontrol, acontrol_with_reply, control, control_with_reply
from dispatcher.publish import (
    BrokerUnavailable,
    InvalidSubmission,
    abatch,
    aclose_connections,
    aget_job,
    ajobs,
    asubmit_task,
    batch,
    close_connections,
    get_job,
    jobs,
    submit_task,
    task,
)
from dispatcher.publish.timestamps import EARLIEST, LATEST
from support.durable import own_schema
from support.postgres import wait_for_notifies

Conn = psycopg.Connection[Any]

DURABLE = "orders"
"""The durable queue of the config; the other target is this test's NOTIFY channel."""

UNSTORABLE = ["a\x00b", "\x00", "a\udcffb", "\ud800"]
"""Strings PostgreSQL cannot hold as text: NUL characters, lone surrogates."""


@task(name="hostile_inputs.notify_work")
def notify_work(value: Any = None) -> None:
    """A task for the default NOTIFY channel."""


@task(name="hostile_inputs.durable_work", queue=DURABLE)
def durable_work(value: Any = None) -> None:
    """A task for the durable queue."""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, with the queue's tables."""
    with own_schema(pg_dsn) as name:
        yield name


@pytest.fixture
def configured(pg_dsn: str, channel: str, schema: str) -> Iterator[Settings]:
    """pg_notify with this test's channel as default, and the durable queue ``orders``."""
    settings = setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {
                    "conninfo": pg_dsn,
                    "channels": [channel],
                    "default_publish_channel": channel,
                },
                "pg_queue": {"queues": [DURABLE], "schema": schema},
            },
        }
    )
    yield settings
    close_connections()
    reset()


@pytest.fixture
def listener(pg_dsn: str, channel: str) -> Iterator[Conn]:
    """A connection LISTENing on this test's channel."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield conn


@pytest.fixture(params=["notify", "durable"])
def target(request: pytest.FixtureRequest, channel: str) -> str:
    """Where the submissions go: this test's NOTIFY channel, or the durable queue."""
    return channel if request.param == "notify" else DURABLE


@pytest.fixture
def delivered(listener: Conn, pg_dsn: str, schema: str) -> Callable[[], list[str]]:
    """The uuids that arrived so far: by NOTIFY, and stored as jobs (committed)."""

    def read() -> list[str]:
        notified = [json.loads(n.payload)["uuid"] for n in wait_for_notifies(listener, 1, 0.3)]
        query = sql.SQL("SELECT uuid FROM {}.jobs ORDER BY id").format(sql.Identifier(schema))
        with psycopg.connect(pg_dsn) as conn:
            stored = [str(uuid) for (uuid,) in conn.execute(query).fetchall()]
        return notified + stored

    return read


def refused_uuid(caught: pytest.ExceptionInfo[InvalidSubmission], uuid: str) -> None:
    """The error names the option and shows the value."""
    assert ": uuid: " in str(caught.value)
    assert repr(uuid) in str(caught.value)


# --- strings PostgreSQL cannot hold, in the fields sent as they are ------------------------


@pytest.mark.parametrize("uuid", UNSTORABLE)
def test_a_uuid_postgresql_cannot_hold_is_refused_before_sending(
    configured: Settings, target: str, uuid: str, delivered: Callable[[], list[str]]
) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        submit_task("myapp.tasks.work", uuid=uuid, queue=target)
    refused_uuid(caught, uuid)
    with pytest.raises(InvalidSubmission, match=": uuid: "):
        durable_work.apply_async(uuid=uuid, queue=target)

    def in_batch() -> None:
        with batch():
            submit_task("myapp.tasks.work", queue=target)
            notify_work.apply_async(uuid=uuid, queue=target)

    with pytest.raises(InvalidSubmission, match=": uuid: "):
        in_batch()
    assert delivered() == []


@pytest.mark.parametrize("uuid", ["a\x00b", "a\udcffb"])
def test_a_refused_uuid_leaves_the_callers_transaction_usable(
    configured: Settings, target: str, uuid: str, pg_dsn: str, delivered: Callable[[], list[str]]
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(InvalidSubmission, match=": uuid: "):
            submit_task("myapp.tasks.work", uuid=uuid, queue=target, connection=conn)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        sent = submit_task("myapp.tasks.work", queue=target, connection=conn)
        conn.commit()
    assert delivered() == [sent.uuid]


@pytest.mark.anyio
@pytest.mark.parametrize("uuid", ["a\x00b", "a\udcffb"])
async def test_a_uuid_postgresql_cannot_hold_is_refused_in_async_code(
    configured: Settings, target: str, uuid: str, pg_dsn: str, delivered: Callable[[], list[str]]
) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute("SELECT 1")
        with pytest.raises(InvalidSubmission) as caught:
            await asubmit_task("myapp.tasks.work", uuid=uuid, queue=target, connection=conn)
        refused_uuid(caught, uuid)
        with pytest.raises(InvalidSubmission, match=": uuid: "):
            await durable_work.aapply_async(uuid=uuid, queue=target, connection=conn)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        await conn.commit()

    async def in_batch() -> None:
        async with abatch():
            await notify_work.aapply_async(uuid=uuid, queue=target)

    with pytest.raises(InvalidSubmission, match=": uuid: "):
        await in_batch()
    await aclose_connections()
    assert delivered() == []


# --- reading jobs back with such strings, or with the wrong types --------------------------


@pytest.mark.parametrize("uuid", UNSTORABLE)
def test_get_job_of_a_uuid_no_job_can_have_finds_none(
    configured: Settings, uuid: str, pg_dsn: str
) -> None:
    assert get_job(uuid) is None
    assert jobs(queue=uuid) == []
    assert jobs(task=uuid, state="queued") == []
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SELECT 1")
        assert get_job(uuid, connection=conn) is None
        assert jobs(queue=uuid, connection=conn) == []
        assert conn.info.transaction_status == TransactionStatus.INTRANS  # not aborted


@pytest.mark.anyio
@pytest.mark.parametrize("uuid", ["a\x00b", "a\udcffb"])
async def test_aget_job_of_a_uuid_no_job_can_have_finds_none(
    configured: Settings, uuid: str, pg_dsn: str
) -> None:
    assert await aget_job(uuid) is None
    assert await ajobs(task=uuid) == []
    async with await AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute("SELECT 1")
        assert await aget_job(uuid, connection=conn) is None
        assert await ajobs(queue=uuid, connection=conn) == []
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    await aclose_connections()


def test_a_uuid_or_filter_of_the_wrong_type_is_a_type_error(configured: Settings) -> None:
    for wrong in (5, None, b"abc"):
        with pytest.raises(TypeError, match=r"^uuid: expected a str, got "):
            get_job(wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^queue: expected a str or None, got int"):
        jobs(queue=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^task: expected a str or None, got bytes"):
        jobs(queue="a\x00", task=b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^limit: "):
        jobs(queue="a\x00", limit=0)


@pytest.mark.anyio
async def test_a_uuid_or_filter_of_the_wrong_type_is_a_type_error_in_async_code(
    configured: Settings,
) -> None:
    with pytest.raises(TypeError, match=r"^uuid: expected a str, got int"):
        await aget_job(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^task: expected a str or None, got int"):
        await ajobs(task=5)  # type: ignore[arg-type]


# --- the caller's own connection: closed, aborted, broken ----------------------------------


def sync_calls(conn: Conn, target: str) -> list[Callable[[], object]]:
    """Every sync call that takes the caller's connection."""

    def in_batch() -> None:
        with batch(connection=conn):
            submit_task("myapp.tasks.work", queue=target)

    durable = target == DURABLE
    return [
        lambda: submit_task("myapp.tasks.work", queue=target, connection=conn),
        lambda: (durable_work if durable else notify_work).apply_async(connection=conn),
        in_batch,
        lambda: get_job("some-uuid", connection=conn),
        lambda: jobs(connection=conn),
    ]


def test_a_closed_connection_is_refused_saying_so(
    configured: Settings, target: str, pg_dsn: str, delivered: Callable[[], list[str]]
) -> None:
    conn = psycopg.connect(pg_dsn)
    conn.close()
    for call in sync_calls(conn, target):
        with pytest.raises(BrokerUnavailable, match=r"connection passed as connection=.*closed"):
            call()
    assert delivered() == []


def test_an_aborted_transaction_is_refused_saying_so_and_left_as_it_was(
    configured: Settings, target: str, pg_dsn: str, delivered: Callable[[], list[str]]
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        for call in sync_calls(conn, target):
            with pytest.raises(BrokerUnavailable, match=r"connection passed as connection=.*abort"):
                call()
            assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()  # the caller's to do; then the connection serves again
        sent = submit_task("myapp.tasks.work", queue=target, connection=conn)
        conn.commit()
    assert delivered() == [sent.uuid]


def test_a_connection_broken_under_the_caller_is_broker_unavailable(
    configured: Settings, target: str, pg_dsn: str, pg_conn: Conn
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        pg_conn.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        with pytest.raises(BrokerUnavailable, match=r"\(the connection passed as connection=\)"):
            submit_task("myapp.tasks.work", queue=target, connection=conn)


def test_an_error_of_the_callers_transaction_is_raised_as_psycopg_raises_it(
    configured: Settings, pg_dsn: str, delivered: Callable[[], list[str]]
) -> None:
    # What a caller may retry its transaction on (a conflict, a lock timeout, a read-only
    # transaction) keeps its type: it is no "broker unavailable".
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as caught:
            submit_task("myapp.tasks.work", queue=DURABLE, connection=conn)
        assert not isinstance(caught.value, BrokerUnavailable)
        conn.rollback()
    assert delivered() == []


def test_a_lock_timeout_in_the_callers_transaction_is_raised_as_psycopg_raises_it(
    configured: Settings, pg_dsn: str, schema: str
) -> None:
    impatient = make_conninfo(pg_dsn, options="-c lock_timeout=100ms")
    with psycopg.connect(pg_dsn) as holder, psycopg.connect(impatient) as conn:
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "jobs"))
        )
        with pytest.raises(psycopg.errors.LockNotAvailable):
            submit_task("myapp.tasks.work", queue=DURABLE, connection=conn)
        conn.rollback()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            get_job("some-uuid", connection=conn)


@pytest.mark.anyio
async def test_async_calls_refuse_a_closed_or_aborted_connection(
    configured: Settings, target: str, pg_dsn: str, delivered: Callable[[], list[str]]
) -> None:
    async def in_batch(conn: AsyncConnection[Any]) -> None:
        async with abatch(connection=conn):
            await asubmit_task("myapp.tasks.work", queue=target)

    work = durable_work if target == DURABLE else notify_work
    calls: list[Callable[[AsyncConnection[Any]], Any]] = [
        lambda conn: asubmit_task("myapp.tasks.work", queue=target, connection=conn),
        lambda conn: work.aapply_async(connection=conn),
        in_batch,
        lambda conn: aget_job("some-uuid", connection=conn),
        lambda conn: ajobs(connection=conn),
    ]
    closed = await AsyncConnection.connect(pg_dsn)
    await closed.close()
    for call in calls:
        with pytest.raises(BrokerUnavailable, match=r"connection passed as connection=.*closed"):
            await call(closed)
    async with await AsyncConnection.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
        for call in calls:
            with pytest.raises(BrokerUnavailable, match=r"connection passed as connection=.*abort"):
                await call(conn)
            assert conn.info.transaction_status == TransactionStatus.INERROR
    async with await AsyncConnection.connect(pg_dsn) as conn:
        async with await AsyncConnection.connect(pg_dsn, autocommit=True) as other:
            await other.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        with pytest.raises(BrokerUnavailable, match=r"\(the connection passed as connection=\)"):
            await asubmit_task("myapp.tasks.work", queue=target, connection=conn)
    await aclose_connections()
    assert delivered() == []


# --- control commands: the queue goes to the database as it is -----------------------------


@pytest.mark.parametrize("queue", ["a\x00b", "a\udcffb", "x" * 64, "has space"])
def test_a_control_queue_that_is_no_channel_name_is_refused(
    configured: Settings, queue: str
) -> None:
    for call in (
        lambda: control("alive", queue=queue),
        lambda: control_with_reply("alive", queue=queue, timeout=0.1),
    ):
        with pytest.raises(InvalidSubmission, match=r"queue: .* is not a valid channel name"):
            call()


@pytest.mark.anyio
async def test_a_control_queue_that_is_no_channel_name_is_refused_in_async_code(
    configured: Settings,
) -> None:
    with pytest.raises(InvalidSubmission, match=r"queue: .* is not a valid channel name"):
        await acontrol("alive", queue="a\x00b")
    with pytest.raises(InvalidSubmission, match=r"queue: .* is not a valid channel name"):
        await acontrol_with_reply("alive", queue="a\udcffb", timeout=0.1)
    await aclose_connections()


def park(pg_dsn: str, schema: str) -> None:
    """Store jobs whose times no datetime can hold, as an operator may by hand."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (uuid, queue, task, message, max_attempts, run_after, created_at)"
                " VALUES ('parked', 'q', 't', '{{}}', 3, 'infinity', '4713-01-01 BC'),"
                " ('ancient', 'q', 't', '{{}}', 3, '-infinity', '20000-01-01')"
            ).format(sql.Identifier(schema, "jobs"))
        )


def test_a_job_whose_times_no_datetime_can_hold_is_read_with_the_extreme_ones(
    configured: Settings, pg_dsn: str, schema: str
) -> None:
    park(pg_dsn, schema)
    timestamptz = psycopg.adapters.types["timestamptz"].oid
    with psycopg.connect(pg_dsn) as conn:
        loader = conn.adapters.get_loader(timestamptz, Format.TEXT)
        for connection in (None, conn):
            parked = get_job("parked", connection=connection)
            assert parked is not None
            assert (parked.run_after, parked.created_at) == (LATEST, EARLIEST)
            listed = {job.uuid: job for job in jobs(queue="q", connection=connection)}
            assert (listed["ancient"].run_after, listed["ancient"].created_at) == (EARLIEST, LATEST)
        # the caller's connection reads as it did
        assert conn.adapters.get_loader(timestamptz, Format.TEXT) is loader


@pytest.mark.anyio
async def test_a_job_whose_times_no_datetime_can_hold_is_read_in_async_code(
    configured: Settings, pg_dsn: str, schema: str
) -> None:
    park(pg_dsn, schema)
    async with await AsyncConnection.connect(pg_dsn) as conn:
        for connection in (None, conn):
            parked = await aget_job("parked", connection=connection)
            assert parked is not None
            assert parked.run_after == LATEST
            assert len(await ajobs(queue="q", connection=connection)) == 2
    await aclose_connections()
