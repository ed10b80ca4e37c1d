"""Publishing to durable queues (``brokers.pg_queue``) from asyncio code: the rows it stores.

The sync tests, ``test_publish_durable.py``, are generated from this file by
``tools/async_to_sync.py`` (``hatch run generate-sync``): edit this one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads

from dispatcher.config import Settings, reset, setup
from dispatcher.publish import (
    BrokerUnavailable,
    InvalidSubmission,
    Job,
    PublishError,
    abatch,
    aclose_connections,
    aget_job,
    ajobs,
    asubmit_task,
    task,
)
from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, duplicate_key
from support.durable import own_schema
from support.postgres import adapter_classes, wait_for_notifies
from support.proxy import DatabaseProxy

Conn = psycopg.Connection[Any]

pytestmark = pytest.mark.anyio


@task(queue="orders")
def ship(order: int, express: bool = False) -> None:
    """A task of a durable queue."""


@task(queue="orders", max_attempts=7, on_duplicate="queue_one")
def reindex(table: str) -> None:
    """A durable task with its own max_attempts, one waiting at most."""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The event loop the tests run in: psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, with the queue's tables made by the migrations."""
    with own_schema(pg_dsn) as name:
        yield name


@pytest.fixture
async def durable(pg_dsn: str, channel: str, schema: str) -> AsyncIterator[Settings]:
    """pg_notify on this test's channel, and durable queues ``orders`` and ``mail``."""
    settings = setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": pg_dsn, "channels": [channel]},
                "pg_queue": {"queues": ["orders", "mail"], "schema": schema, "max_attempts": 4},
            },
        }
    )
    yield settings
    await aclose_connections()
    reset()


@pytest.fixture
def reader_conninfo(pg_dsn: str, schema: str) -> Iterator[str]:
    """The conninfo of a role that may read the queue's jobs, but not store any."""
    names = {"role": sql.Identifier(f"reader_{schema}"), "schema": sql.Identifier(schema)}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {role} LOGIN").format(**names))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {schema} TO {role}").format(**names))
        conn.execute(sql.SQL("GRANT SELECT ON {schema}.jobs TO {role}").format(**names))
    yield make_conninfo(pg_dsn, user=f"reader_{schema}")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {role}").format(**names))
        conn.execute(sql.SQL("DROP ROLE {role}").format(**names))


@pytest.fixture
async def read_only(reader_conninfo: str, channel: str, schema: str) -> AsyncIterator[Settings]:
    """The config of :func:`reader_conninfo`'s role, with the durable queue ``orders``."""
    settings = setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": reader_conninfo, "channels": [channel]},
                "pg_queue": {"queues": ["orders"], "schema": schema},
            },
        }
    )
    yield settings
    await aclose_connections()
    reset()


@pytest.fixture
def wakeups(pg_dsn: str) -> Iterator[Conn]:
    """A connection LISTENing where the services of durable queues are woken."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {QUEUE_WAKEUP_CHANNEL}")
        yield conn


def woken(listener: Conn, count: int = 1, timeout: float = 5) -> list[str]:
    return [n.payload for n in wait_for_notifies(listener, count, timeout)]


def rows(pg_dsn: str, schema: str) -> list[dict[str, Any]]:
    """Every job row, in id order, with ``delay``: its run_after less its created_at."""
    query = sql.SQL("SELECT *, run_after - created_at AS delay FROM {}.jobs ORDER BY id").format(
        sql.Identifier(schema)
    )
    with psycopg.connect(pg_dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(query).fetchall()


async def test_delay_stores_the_message_as_a_job_and_wakes_its_queue(
    durable: Settings, wakeups: Conn, pg_dsn: str, schema: str
) -> None:
    submission = await ship.adelay(42, express=True)
    assert woken(wakeups) == ["orders"]
    [row] = rows(pg_dsn, schema)
    assert submission.channel == "orders"
    assert submission.payloads == (row["message"],)  # stored whole, unsigned
    assert json.loads(row["message"]) == submission.message
    assert submission.message["args"] == [42]
    expected = {
        "uuid": submission.uuid,
        "queue": "orders",
        "task": ship.__dispatcher_task__,
        "state": "queued",
        "attempts": 0,
        "max_attempts": 4,  # the queue's
        "delay": timedelta(0),
        "on_duplicate": None,
        "dup_key": None,
    }
    assert {key: row[key] for key in expected} == expected
    assert "max_attempts" not in row["message"]


async def test_options_go_to_the_row(
    durable: Settings, wakeups: Conn, pg_dsn: str, schema: str
) -> None:
    first = await asubmit_task(
        ship, args=[1], queue="mail", delay=30, on_duplicate="serial", max_attempts=2
    )
    second = await reindex.adelay("users")
    [a, b] = rows(pg_dsn, schema)
    assert (a["queue"], a["max_attempts"], a["delay"]) == ("mail", 2, timedelta(seconds=30))
    assert (a["on_duplicate"], a["dup_key"]) == ("serial", duplicate_key(first.message))
    assert first.message["delay"] == 30  # the message is unchanged: it keeps its options
    assert (b["queue"], b["max_attempts"], b["on_duplicate"]) == ("orders", 7, "queue_one")
    assert b["dup_key"] == duplicate_key(second.message)
    assert sorted(woken(wakeups, 2)) == ["mail", "orders"]


async def test_a_job_stored_again_or_refused_by_on_duplicate_is_skipped(
    durable: Settings, pg_dsn: str, schema: str
) -> None:
    await ship.aapply_async(args=[1], uuid="same-uuid")
    await ship.aapply_async(args=[2], uuid="same-uuid")  # e.g. a retried request
    await reindex.adelay("users")
    await reindex.adelay("users")  # queue_one: one already waits
    await reindex.adelay("groups")
    stored = [(row["uuid"], json.loads(row["message"])["args"]) for row in rows(pg_dsn, schema)]
    assert stored[0] == ("same-uuid", [1])
    assert [args for _, args in stored[1:]] == [["users"], ["groups"]]


async def test_a_store_whose_reply_is_lost_is_sent_again_and_stores_the_job_once(
    pg_dsn: str, channel: str, schema: str
) -> None:
    """Unlike a NOTIFY, an insert is sent again on a new connection when the first one
    broke after it reached the server: the job's uuid is stored already, so the repeat
    stores nothing, and the call succeeds."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        setup(
            {
                "version": 1,
                "brokers": {
                    "pg_notify": {"conninfo": proxy.dsn, "channels": [channel]},
                    "pg_queue": {"conninfo": proxy.dsn, "queues": ["orders"], "schema": schema},
                },
            }
        )
        await ship.adelay(1)
        proxy.lose_next_reply()
        second = await ship.adelay(2)
        assert [(row["uuid"], row["attempts"]) for row in rows(pg_dsn, schema)][1:] == [
            (second.uuid, 0)
        ]
        assert proxy.accepted == 2  # sent again on a new connection
    finally:
        await aclose_connections()
        reset()
        proxy.down()


async def test_a_store_whose_reply_is_lost_and_that_cannot_be_sent_again_says_it_may_have_run(
    pg_dsn: str, channel: str, schema: str
) -> None:
    """Sent again it would have been stored once; when no new connection opens, the error
    must not read as "not queued": the job may be stored (and is, here)."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        setup(
            {
                "version": 1,
                "brokers": {
                    "pg_notify": {"conninfo": proxy.dsn, "channels": [channel]},
                    "pg_queue": {"conninfo": proxy.dsn, "queues": ["orders"], "schema": schema},
                },
            }
        )
        await ship.adelay(1)
        proxy.lose_next_reply()
        proxy.refuse_new()
        with pytest.raises(BrokerUnavailable, match="may or may not have run") as caught:
            await ship.aapply_async(args=[2], uuid="cut-twice")
        assert "connecting again failed" in str(caught.value)
        assert [row["uuid"] for row in rows(pg_dsn, schema)][1:] == ["cut-twice"]
    finally:
        await aclose_connections()
        reset()
        proxy.down()


async def test_rollback_leaves_no_job_and_commit_leaves_one(
    durable: Settings, wakeups: Conn, pg_dsn: str, schema: str
) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        await ship.aapply_async(args=[1], connection=conn)
        await conn.rollback()
        assert rows(pg_dsn, schema) == []
        kept = await ship.aapply_async(args=[2], connection=conn)
        assert rows(pg_dsn, schema) == []  # not before the commit
        await conn.commit()
    assert [row["uuid"] for row in rows(pg_dsn, schema)] == [kept.uuid]
    assert woken(wakeups, 2, timeout=1) == ["orders"]  # the rolled-back one woke nobody


async def test_a_delay_counts_from_the_call_in_a_long_transaction(
    durable: Settings, pg_dsn: str, schema: str
) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute("SELECT now() FROM pg_sleep(1)")
        began = (await cursor.fetchone() or [None])[0]  # the transaction began a second ago
        await ship.aapply_async(args=[1], delay=5, connection=conn)
        await conn.commit()
    [row] = rows(pg_dsn, schema)
    assert row["created_at"] - began >= timedelta(seconds=1)  # the call, not the BEGIN
    assert row["run_after"] - row["created_at"] == timedelta(seconds=5)


async def test_a_batch_stores_everything_in_order_and_wakes_each_queue_once(
    durable: Settings, wakeups: Conn, pg_dsn: str, schema: str, channel: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        async with abatch():
            for order in range(5):
                await ship.adelay(order)
            await asubmit_task("myapp.tasks.notify", queue=channel)  # a NOTIFY channel
            await asubmit_task("myapp.tasks.mail", queue="mail")
        [notified] = [n.payload for n in wait_for_notifies(listener, 1, 5)]
    assert json.loads(notified)["task"] == "myapp.tasks.notify"
    stored = rows(pg_dsn, schema)
    assert [json.loads(row["message"])["args"] for row in stored] == [[0], [1], [2], [3], [4], []]
    assert [row["queue"] for row in stored] == ["orders"] * 5 + ["mail"]
    assert sorted(woken(wakeups, 3, timeout=1)) == ["mail", "orders"]


async def test_a_batch_on_a_connection_that_rolls_back_stores_nothing(
    durable: Settings, pg_dsn: str, schema: str
) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        async with abatch(connection=conn):
            await ship.adelay(1)
            await ship.adelay(2)
        await conn.rollback()
    assert rows(pg_dsn, schema) == []


async def test_a_large_message_is_stored_whole(durable: Settings, pg_dsn: str, schema: str) -> None:
    submission = await ship.adelay(1, express="x" * 20_000)
    [row] = rows(pg_dsn, schema)
    assert submission.payloads == (row["message"],)
    assert json.loads(row["message"])["kwargs"]["express"] == "x" * 20_000


async def test_max_attempts_applies_to_durable_queues_only(durable: Settings, channel: str) -> None:
    with pytest.raises(InvalidSubmission, match="max_attempts: applies to durable queues only"):
        await asubmit_task("myapp.tasks.notify", queue=channel, max_attempts=3)
    with pytest.raises(InvalidSubmission, match="max_attempts: applies to durable queues only"):
        await reindex.aapply_async(args=["users"], queue=channel)  # its @task default
    with pytest.raises(InvalidSubmission, match="max_attempts: must be between 1 and 1000"):
        await ship.aapply_async(args=[1], max_attempts=0)


async def test_get_job_reads_a_job_back(durable: Settings) -> None:
    submission = await ship.aapply_async(args=[3], delay=60, max_attempts=9)
    job = await aget_job(submission.uuid)
    assert isinstance(job, Job)
    assert (job.uuid, job.queue, job.task, job.state) == (
        submission.uuid,
        "orders",
        ship.__dispatcher_task__,
        "queued",
    )
    assert (job.attempts, job.max_attempts, job.finished) == (0, 9, False)
    assert job.run_after - job.created_at == timedelta(seconds=60)
    assert (job.started_at, job.finished_at, job.node_id, job.outcome, job.result) == ((None,) * 5)
    assert json.loads(job.message) == submission.message
    assert await aget_job("no-such-uuid") is None


async def test_jobs_lists_the_newest_first_with_filters(durable: Settings, pg_dsn: str) -> None:
    first = await ship.adelay(1)
    second = await reindex.adelay("users")
    third = await asubmit_task("myapp.tasks.mail", queue="mail")
    assert [job.uuid for job in await ajobs()] == [third.uuid, second.uuid, first.uuid]
    assert [job.uuid for job in await ajobs(queue="orders", limit=1)] == [second.uuid]
    assert [job.uuid for job in await ajobs(task="myapp.tasks.mail")] == [third.uuid]
    assert await ajobs(state="done") == []
    async with await AsyncConnection.connect(pg_dsn) as conn:
        assert [job.uuid for job in await ajobs(queue="mail", connection=conn)] == [third.uuid]
    with pytest.raises(ValueError, match="state: 'finished' is not one of queued, running"):
        await ajobs(state="finished")  # type: ignore[arg-type]


def decimal_loads(data: str | bytes) -> Any:
    """An application's own JSON decoder: numbers with a point read as ``Decimal``."""
    return json.loads(data, parse_float=Decimal)


async def test_reading_again_and_again_on_the_callers_connection_leaks_no_classes(
    durable: Settings, pg_dsn: str, schema: str
) -> None:
    # psycopg keeps every loader class it is given for the process's life: one made for
    # each read leaked about 2.7 KB a call in an application polling its jobs.
    submission = await ship.adelay(1)
    async with await AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute(
            sql.SQL("UPDATE {}.jobs SET result = '{{\"a\": 0.1}}' WHERE uuid = %s").format(
                sql.Identifier(schema)
            ),
            (submission.uuid,),
        )
        set_json_loads(decimal_loads, conn)  # the application's own loader: kept
        job = await aget_job(submission.uuid, connection=conn)
        assert job is not None
        assert job.result == {"a": Decimal("0.1")}
        assert [job.uuid for job in await ajobs(connection=conn)] == [submission.uuid]
        before = adapter_classes()
        for _ in range(20):
            job = await aget_job(submission.uuid, connection=conn)
            assert job is not None
            assert job.result == {"a": Decimal("0.1")}
            assert [job.uuid for job in await ajobs(connection=conn)] == [submission.uuid]
        assert adapter_classes() == before


async def test_missing_tables_are_explained(pg_dsn: str, tmp_path: Path) -> None:
    config = {
        "version": 1,
        "brokers": {"pg_queue": {"conninfo": pg_dsn, "queues": ["orders"], "schema": "absent"}},
    }
    setup(config)
    try:
        with pytest.raises(PublishError, match="run `dispatcherctl migrate` first"):
            await ship.adelay(1)
        with pytest.raises(PublishError, match="tables are missing from schema 'absent'"):
            await aget_job("any")
        # Read from a file, the config is named in the command to run, as the service names it.
        path = tmp_path / "queues.yml"
        path.write_text(json.dumps(config))
        setup(file_path=path)
        with pytest.raises(PublishError) as caught:
            await ship.adelay(1)
        assert f"run `dispatcherctl migrate --config {path}` first (it creates them" in str(
            caught.value
        )
    finally:
        await aclose_connections()
        reset()


def fail_inserts(pg_dsn: str, schema: str, code: str, times: int) -> None:
    """Have the next *times* inserts into the jobs table fail with SQLSTATE *code*."""
    names = {"schema": sql.Identifier(schema), "code": sql.Literal(code)}
    body = sql.SQL(
        """
        CREATE SEQUENCE {schema}.failed_inserts;
        CREATE FUNCTION {schema}.fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval({sequence}) <= {times} THEN
                RAISE EXCEPTION 'made to fail' USING ERRCODE = {code};
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER fail_insert BEFORE INSERT ON {schema}.jobs
            FOR EACH STATEMENT EXECUTE FUNCTION {schema}.fail_insert();
        """
    ).format(sequence=sql.Literal(f'"{schema}".failed_inserts'), times=sql.Literal(times), **names)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(body)


@pytest.mark.parametrize("code", ["40001", "40P01"], ids=["serialization", "deadlock"])
async def test_a_store_rolled_back_by_a_serialization_failure_or_deadlock_is_sent_again(
    durable: Settings, pg_dsn: str, schema: str, code: str
) -> None:
    """The statement was rolled back (a role whose default_transaction_isolation is
    serializable, a deadlock): nothing was stored, and sending it once more stores the job.
    It used to fail, saying that it could not send to the database."""
    fail_inserts(pg_dsn, schema, code, 1)
    submission = await ship.adelay(1)
    assert [row["uuid"] for row in rows(pg_dsn, schema)] == [submission.uuid]


async def test_a_store_rolled_back_twice_says_nothing_was_stored(
    durable: Settings, pg_dsn: str, schema: str
) -> None:
    fail_inserts(pg_dsn, schema, "40001", 2)
    with pytest.raises(BrokerUnavailable) as caught:
        await ship.adelay(1)
    message = str(caught.value)
    assert "rolled the statement back, twice" in message
    assert "nothing was stored" in message
    assert "made to fail" in message
    assert rows(pg_dsn, schema) == []


async def test_a_missing_privilege_is_a_publish_error_that_no_retry_cures(
    read_only: Settings,
) -> None:
    for _ in range(2):  # refused every time, on a connection still usable
        with pytest.raises(PublishError) as caught:
            await ship.adelay(1)
        assert not isinstance(caught.value, BrokerUnavailable)
        message = str(caught.value)
        assert message.startswith("cannot send to PostgreSQL at "), message
        assert message.endswith(
            ": it refused to store the job: permission denied for table jobs "
            "(SQLSTATE 42501: sending again will not help)"
        ), message

    async def store_two() -> None:
        async with abatch():
            await ship.adelay(2)
            await ship.adelay(3)

    with pytest.raises(PublishError, match="it refused to store the jobs: permission denied"):
        await store_two()
    assert await ajobs() == []  # reading is granted
