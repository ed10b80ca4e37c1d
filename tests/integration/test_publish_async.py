"""The async publishing API over real PostgreSQL: what a LISTENing connection receives.

The sync tests, ``test_publish.py``, are generated from this file by
``tools/async_to_sync.py`` (``hatch run generate-sync``): edit this one. The tests of what
only the async API has are listed as async-only there, and marked so here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import Settings, reset, setup
from dispatcher.control import acontrol_with_reply
from dispatcher.publish import (
    BrokerUnavailable,
    ChunkAssembler,
    InvalidSubmission,
    PublishError,
    Submission,
    abatch,
    aclose_connections,
    asubmit_task,
)
from dispatcher.publish.chunking import is_chunk
from support import tasks
from support.paths import EXAMPLES
from support.postgres import adapter_classes, unique_channel, wait_for_notifies
from support.proxy import DatabaseProxy, SilentServer
from support.service import wait_until
from support.twins import ablock_on, agather, connection_of_the_other_kind

Conn = psycopg.Connection[Any]

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The event loop the tests run in: psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture(autouse=True)
async def _own_connections_closed() -> AsyncIterator[None]:
    """The SDK's own connections opened by the test are closed when it ends."""
    yield
    await aclose_connections()


def received(listener: Conn, count: int, timeout: float = 5) -> list[str]:
    return [n.payload for n in wait_for_notifies(listener, count, timeout)]


def nothing_more(listener: Conn) -> bool:
    return received(listener, 1, timeout=0.3) == []


async def test_delay_sends_exactly_the_message(
    configured: Settings, listener: Conn, channel: str
) -> None:
    submission = await tasks.add.adelay(2, 3)
    [payload] = received(listener, 1)
    assert json.loads(payload) == {
        "task": "support.tasks.add",
        "uuid": submission.uuid,
        "args": [2, 3],
        "kwargs": {},
        "time_pub": submission.message["time_pub"],
    }
    assert payload == submission.payloads[0]
    assert submission.channel == channel
    assert nothing_more(listener)


async def test_apply_async_with_options(configured: Settings, listener: Conn, channel: str) -> None:
    submission = await tasks.send_email.aapply_async(
        args=["a@example.com"],
        kwargs={"subject": "hi"},
        queue=channel,
        uuid="fixed-uuid",
        timeout=5,
        delay=1.5,
        on_duplicate="queue_one",
    )
    [payload] = received(listener, 1)
    assert json.loads(payload) == {
        "task": "support.tasks.send_email",
        "uuid": "fixed-uuid",
        "args": ["a@example.com"],
        "kwargs": {"subject": "hi"},
        "time_pub": submission.message["time_pub"],
        "timeout": 5,
        "delay": 1.5,
        "on_duplicate": "queue_one",
    }


async def test_submit_task_by_name(configured: Settings, listener: Conn) -> None:
    submission = await asubmit_task(
        "billing.tasks.charge", args=[1], kwargs={"invoice": 7}, bind=True
    )
    [payload] = received(listener, 1)
    assert json.loads(payload) == {
        "task": "billing.tasks.charge",
        "uuid": submission.uuid,
        "args": [1],
        "kwargs": {"invoice": 7},
        "time_pub": submission.message["time_pub"],
        "bind": True,
    }


async def test_a_refused_submission_sends_nothing(configured: Settings, listener: Conn) -> None:
    with pytest.raises(InvalidSubmission, match="timeout: must be at least 0"):
        await tasks.add.aapply_async(args=[1, 2], timeout=-1)
    with pytest.raises(InvalidSubmission, match="is not JSON-serialisable"):
        await tasks.add.adelay(object(), 1)
    assert nothing_more(listener)


async def test_transaction_rollback_sends_nothing_commit_sends_once(
    configured: Settings, listener: Conn, pg_dsn: str
) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        await tasks.add.aapply_async(args=[1, 1], connection=conn)
        assert nothing_more(listener)  # not before the commit
        await conn.rollback()
        assert nothing_more(listener)
        committed = await tasks.add.aapply_async(args=[2, 2], connection=conn)
        await conn.commit()
    assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [committed.uuid]
    assert nothing_more(listener)


async def test_100_kb_payload_arrives_as_chunks(configured: Settings, listener: Conn) -> None:
    big = "".join(chr(32 + i % 90) for i in range(100_000))
    submission = await tasks.add.adelay(big, "é and \u2603")
    payloads = received(listener, len(submission.payloads))
    assert len(payloads) == len(submission.payloads) > 12
    assembler = ChunkAssembler()
    whole = [assembler.add(json.loads(p)) for p in payloads if is_chunk(json.loads(p))]
    assert json.loads(next(w for w in whole if w is not None)) == submission.message


async def test_batch_sends_in_order_and_nothing_on_error(
    configured: Settings, listener: Conn
) -> None:
    async with abatch() as sent:
        for n in range(50):
            await tasks.add.adelay(n, n)
        assert nothing_more(listener)  # held until the block ends
    assert [json.loads(p)["args"][0] for p in received(listener, 50)] == list(range(50))
    assert len(sent.submissions) == 50

    async def failing_block() -> None:
        async with abatch():
            await tasks.add.adelay(0, 0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_block()
    assert nothing_more(listener)


async def test_a_batch_inside_a_batch_is_all_or_nothing_with_it(
    configured: Settings, listener: Conn
) -> None:
    async def outer_fails_after_inner() -> None:
        async with abatch():
            async with abatch():
                await tasks.add.adelay(1, 0)
            raise RuntimeError("outer")

    with pytest.raises(RuntimeError, match="outer"):
        await outer_fails_after_inner()
    assert nothing_more(listener)  # the inner block's part went with the outer one

    async def inner_fails() -> None:
        async with abatch():
            await tasks.add.adelay(3, 0)
            raise RuntimeError("inner")

    async with abatch():
        await tasks.add.adelay(2, 0)
        with pytest.raises(RuntimeError, match="inner"):
            await inner_fails()
        async with abatch():
            await tasks.add.adelay(4, 0)
        assert nothing_more(listener)  # all leaves when the outer block ends
    assert [json.loads(p)["args"][0] for p in received(listener, 2)] == [2, 4]


async def test_batch_joins_a_transaction(configured: Settings, listener: Conn, pg_dsn: str) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        async with abatch(connection=conn):
            await tasks.add.adelay(1, 2)
            await tasks.add.adelay(3, 4)
        assert nothing_more(listener)
        await conn.commit()
    assert len(received(listener, 2)) == 2


# Async only: a call of the sync API inside an async batch joins it too.
async def test_a_sync_call_inside_an_async_batch_joins_it(
    configured: Settings, listener: Conn
) -> None:
    async with abatch():
        for n in range(20):
            await tasks.add.adelay(n, 0)
        tasks.add.delay(20, 0)
    assert [json.loads(p)["args"][0] for p in received(listener, 21)] == list(range(21))


# Async only: an asyncio task started in a batch block, which copies its context.
async def test_a_task_started_in_a_batch_sends_what_it_submits_after_the_block(
    configured: Settings, listener: Conn
) -> None:
    block_ended = asyncio.Event()

    async def later() -> tuple[Submission, Submission]:
        during = await tasks.add.adelay(1, 0)  # the block is open: it joins the batch
        await block_ended.wait()
        return during, await tasks.add.adelay(2, 0)  # the block has ended: sent at once

    async with abatch():
        background = asyncio.create_task(later())
        await asyncio.sleep(0)
    block_ended.set()
    during, after = await background
    uuids = [json.loads(p)["uuid"] for p in received(listener, 2)]
    assert uuids == [during.uuid, after.uuid]


# Async only: an asyncio task started in a block inside another one.
async def test_a_task_started_in_an_inner_block_joins_the_outer_one_after_the_inner_one(
    configured: Settings, listener: Conn
) -> None:
    inner_ended, submitted, outer_ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def later() -> tuple[Submission, Submission]:
        await inner_ended.wait()
        between = await tasks.add.adelay(2, 0)  # the outer block runs: it joins its batch
        submitted.set()
        await outer_ended.wait()
        return between, await tasks.add.adelay(3, 0)  # both have ended: sent at once

    async with abatch():
        async with abatch():
            background = asyncio.create_task(later())
            inside = await tasks.add.adelay(1, 0)
        inner_ended.set()
        await submitted.wait()
        assert nothing_more(listener)
    outer_ended.set()
    between, after = await background
    uuids = [json.loads(p)["uuid"] for p in received(listener, 3)]
    assert uuids == [inside.uuid, between.uuid, after.uuid]


def configure_with_app_name(pg_dsn: str, channel: str) -> str:
    """Configure the SDK so that its own connections can be told apart; return their name."""
    app_name = f"pub_{channel}"
    conninfo = make_conninfo(pg_dsn, application_name=app_name)
    setup({"version": 1, "brokers": {"pg_notify": {"conninfo": conninfo, "channels": [channel]}}})
    return app_name


def connections_named(pg_conn: Conn, app_name: str) -> int:
    [(count,)] = pg_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
    ).fetchall()
    return int(count)


async def test_lost_connection_is_reopened_without_losing_the_call(
    pg_dsn: str, channel: str, listener: Conn, pg_conn: Conn
) -> None:
    app_name = configure_with_app_name(pg_dsn, channel)
    await tasks.add.adelay(0, 0)
    assert len(received(listener, 1)) == 1
    killed = pg_conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app_name,),
    ).fetchall()
    assert killed == [(True,)]
    # Ended while idle: found so before the next send, which goes on a new connection.
    wait_until(lambda: connections_named(pg_conn, app_name) == 0, timeout=5)
    after = await tasks.add.adelay(1, 1)
    assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [after.uuid]


async def test_a_notify_whose_reply_is_lost_is_delivered_once_and_the_call_says_so(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    """The connection breaks once the NOTIFY reached the server: it is not sent again (the
    task would run twice), and the error says the database stopped answering during the
    send, not that it cannot be connected to."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        configure_with_app_name(proxy.dsn, channel)
        await tasks.add.adelay(0, 0)
        assert len(received(listener, 1)) == 1
        proxy.lose_next_reply()
        with pytest.raises(BrokerUnavailable) as failure:
            await tasks.add.adelay(1, 1)
        message = str(failure.value)
        assert "the database stopped answering during the send" in message
        assert "may or may not have been delivered" in message
        assert "cannot connect" not in message
        [lost] = received(
            listener, 1, timeout=25
        )  # the server ran it (slow when the machine is busy)
        assert json.loads(lost)["args"] == [1, 1]
        after = await tasks.add.adelay(2, 2)  # on a new connection
        assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [after.uuid]
    finally:
        proxy.down()


async def test_a_batch_whose_reply_is_lost_is_delivered_once(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        configure_with_app_name(proxy.dsn, channel)
        await tasks.add.adelay(0, 0)
        assert len(received(listener, 1)) == 1
        proxy.lose_next_reply()

        async def send_three() -> None:
            async with abatch():
                for n in range(3):
                    await tasks.add.adelay(n, n)

        with pytest.raises(BrokerUnavailable, match="may or may not have been delivered"):
            await send_three()
        delivered = received(listener, 3, timeout=25)  # (the server ran them: slow when busy)
        assert [json.loads(p)["args"] for p in delivered] == [[0, 0], [1, 1], [2, 2]]
        after = await tasks.add.adelay(9, 9)
        assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [after.uuid]
    finally:
        proxy.down()


def _submit_in_child(config: dict[str, Any], queue: Any) -> None:
    setup(config)
    queue.put(ablock_on(tasks.add.adelay(7, 7)).uuid)


async def test_forked_child_uses_its_own_connection(configured: Settings, listener: Conn) -> None:
    await tasks.add.adelay(0, 0)  # the parent's connection is open before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_submit_in_child, args=(dict(configured.data), results))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    child_uuid = results.get(timeout=5)
    parent_after = await tasks.add.adelay(1, 1)  # the parent's connection survived the child
    uuids = [json.loads(p)["uuid"] for p in received(listener, 3)]
    assert uuids[1:] == [child_uuid, parent_after.uuid]


async def test_concurrent_callers_share_one_connection(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    proxy = DatabaseProxy(pg_dsn)  # counts the connections opened through it
    proxy.up()
    try:
        configure_with_app_name(proxy.dsn, channel)
        submissions: list[Submission] = []

        async def work() -> None:
            for n in range(25):
                submissions.append(await tasks.add.adelay(n, n))

        await agather(*[work] * 8)
        notifications = wait_for_notifies(listener, 200, 5)
        uuids = [json.loads(n.payload)["uuid"] for n in notifications]
        assert sorted(uuids) == sorted(s.uuid for s in submissions)
        # The first caller opens it while the others wait for it: one connection in all.
        assert len({n.pid for n in notifications}) == 1
        assert proxy.accepted == 1
    finally:
        await aclose_connections()
        proxy.down()


async def test_callers_waiting_for_a_connection_share_the_failure_to_open_it(
    channel: str,
) -> None:
    """An unreachable server fails every caller waiting at once, after one attempt, not one
    after another (the last of N callers waited N connect timeouts)."""
    server = SilentServer()
    try:
        conninfo = (
            f"host=127.0.0.1 port={server.port} dbname=x user=x connect_timeout=1 sslmode=disable"
        )
        setup(
            {"version": 1, "brokers": {"pg_notify": {"conninfo": conninfo, "channels": [channel]}}}
        )
        failures: list[BaseException] = []

        async def publish() -> None:
            try:
                await tasks.add.adelay(1, 2)
            except BrokerUnavailable as exc:
                failures.append(exc)

        await agather(*[publish] * 6)
        assert len(failures) == 6
        assert server.accepted == 1
    finally:
        server.close()
        reset()


# Async only: an application (or a test suite) may run event loops one after the other, or
# at the same time in threads; each gets a working connection.
async def test_each_event_loop_gets_a_working_connection(
    configured: Settings, listener: Conn
) -> None:
    first = await tasks.add.adelay(1, 0)
    second = await asyncio.to_thread(asyncio.run, tasks.add.adelay(2, 0))
    third = await tasks.add.adelay(3, 0)
    assert [json.loads(p)["uuid"] for p in received(listener, 3)] == [
        first.uuid,
        second.uuid,
        third.uuid,
    ]


async def test_a_new_event_loop_for_each_publish_leaks_no_classes(
    configured: Settings, listener: Conn
) -> None:
    """Each loop's connection once got a loader class of its own, which psycopg keeps for
    the process's life: code running a loop for each publish grew without bound."""
    await asyncio.to_thread(asyncio.run, tasks.add.adelay(0, 0))
    before = adapter_classes()
    for n in range(1, 11):
        await asyncio.to_thread(asyncio.run, tasks.add.adelay(n, 0))
    assert len(received(listener, 11)) == 11
    assert adapter_classes() == before


async def test_event_loops_of_several_threads_publish_at_once_each_on_its_own_connection(
    configured: Settings, listener: Conn
) -> None:
    """Asyncio applications run in threads (or asgiref's async_to_sync): nothing lost or
    doubled, and no loop's connection closed under another (it once was: errors, hangs)."""
    threads, each = 4, 50
    start = threading.Barrier(threads)

    async def publish() -> list[str]:
        start.wait()
        return [(await tasks.add.adelay(n, n)).uuid for n in range(each)]

    def in_its_own_loop() -> list[str]:
        return asyncio.run(publish())

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        published = [
            uuid
            for uuids in pool.map(lambda _: in_its_own_loop(), range(threads))
            for uuid in uuids
        ]
    notifications = wait_for_notifies(listener, threads * each, 10)
    delivered = [json.loads(n.payload)["uuid"] for n in notifications]
    assert sorted(delivered) == sorted(published)
    assert nothing_more(listener)
    assert len({n.pid for n in notifications}) == threads


async def test_closing_the_connection_while_tasks_of_its_loop_publish_loses_no_send(
    configured: Settings, listener: Conn
) -> None:
    """Each send is delivered once: the connection is closed between statements, never
    under one (its socket closed while a task waits on it), and a call that had not sent
    yet sends on a new one (a close never makes a send fail).

    A close waits for a send to land since the one before: each close while a connect is
    under way makes the tasks connect again, and closes at a fixed pace starved them on a
    loaded machine."""
    delivered: list[str] = []
    unavailable: list[str] = []
    publishing = 4
    closes = 0

    async def publish() -> None:
        nonlocal publishing
        for n in range(12):
            try:
                async with abatch():  # a longer statement: more often running when closed
                    sent = [(await tasks.add.adelay(n, k)).uuid for k in range(10)]
                delivered.extend(sent)
            except BrokerUnavailable as exc:
                unavailable.append(str(exc))
        publishing -= 1

    async def close() -> None:
        nonlocal closes
        landed = 0
        while publishing:
            if len(delivered) > landed:  # the connection was used since the last close
                landed = len(delivered)
                await aclose_connections()
                closes += 1
            await asyncio.sleep(0.002)  # pacing only: closes between the sends

    await asyncio.gather(*[publish() for _ in range(4)], close())
    assert unavailable == []
    assert len(delivered) == 4 * 12 * 10
    assert closes >= 10  # closed while the others sent, again and again
    arrived = wait_for_notifies(listener, len(delivered), 30)
    assert sorted(json.loads(n.payload)["uuid"] for n in arrived) == sorted(delivered)
    assert nothing_more(listener)


async def test_unreachable_database_is_one_clear_sentence(channel: str) -> None:
    setup(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {
                    "conninfo": "host=127.0.0.1 port=1 dbname=app user=web password=s3cret connect_timeout=2",
                    "channels": [channel],
                }
            },
        }
    )
    with pytest.raises(BrokerUnavailable) as caught:
        await tasks.add.adelay(1, 2)
    message = str(caught.value)
    assert message.startswith(
        "cannot connect to PostgreSQL at 127.0.0.1, port 1, database 'app', user 'web': "
    )
    assert "s3cret" not in message
    assert "\n" not in message


@pytest.fixture
def notify_refused(pg_dsn: str) -> Iterator[str]:
    """The conninfo of a role not allowed to NOTIFY, in a database of this test's own."""
    name = unique_channel("no_notify")
    names = {"name": sql.Identifier(name)}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {name}").format(**names))
        conn.execute(sql.SQL("CREATE ROLE {name} LOGIN").format(**names))
    with psycopg.connect(make_conninfo(pg_dsn, dbname=name), autocommit=True) as conn:
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
    yield make_conninfo(pg_dsn, dbname=name, user=name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {name} WITH (FORCE)").format(**names))
        conn.execute(sql.SQL("DROP ROLE {name}").format(**names))


async def test_a_refused_notify_is_a_publish_error_that_no_retry_cures(
    notify_refused: str, channel: str
) -> None:
    setup(
        {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": notify_refused, "channels": [channel]}},
        }
    )
    try:
        for _ in range(2):  # refused every time, on a connection still usable
            with pytest.raises(PublishError) as caught:
                await tasks.add.adelay(1, 2)
            assert not isinstance(caught.value, BrokerUnavailable)
            message = str(caught.value)
            assert message.startswith("cannot send to PostgreSQL at "), message
            assert message.endswith(
                ": it refused the NOTIFY: permission denied for function pg_notify "
                "(SQLSTATE 42501: sending again will not help)"
            ), message
        with pytest.raises(PublishError) as caught:
            await acontrol_with_reply("alive", queue=channel, expected_replies=1, timeout=0.1)
        assert not isinstance(caught.value, BrokerUnavailable)
        assert str(caught.value).endswith(
            ": it refused the control command: permission denied for function pg_notify "
            "(SQLSTATE 42501: sending again will not help)"
        )
    finally:
        await aclose_connections()
        reset()


def refusal(api: str, kind: type[object], given: object, other: str) -> str:
    """The pattern of the message that refuses *given* as the connection of *api*."""
    hint = (
        f"; use {other}() with that connection"
        if isinstance(given, psycopg.BaseConnection)
        else " (a psycopg connection object: a conninfo string goes in the config)"
    )
    return "^" + re.escape(
        f"{api}() needs a psycopg {kind.__name__}, got {type(given).__name__}{hint}"
    )


async def test_a_connection_of_the_wrong_kind_is_explained(
    configured: Settings, listener: Conn, pg_dsn: str
) -> None:
    wrong = "not a connection"
    with pytest.raises(
        TypeError, match=refusal("asubmit_task", AsyncConnection, wrong, "submit_task")
    ):
        await asubmit_task(tasks.add, args=[1, 2], connection=wrong)  # type: ignore[arg-type]
    # Through the task's method, the refusal names that method.
    with pytest.raises(
        TypeError, match=refusal("aapply_async", AsyncConnection, wrong, "apply_async")
    ):
        await tasks.add.aapply_async(args=[1, 2], connection=wrong)  # type: ignore[arg-type]
    with (
        connection_of_the_other_kind(pg_dsn, AsyncConnection) as other,
        pytest.raises(
            TypeError, match=refusal("aapply_async", AsyncConnection, other, "apply_async")
        ),
    ):
        await tasks.add.aapply_async(args=[1, 2], connection=other)
    assert nothing_more(listener)


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "task-message" / "valid").glob("*.json")), ids=lambda p: p.stem
)
async def test_every_valid_example_can_be_produced(
    configured: Settings, listener: Conn, channel: str, path: Path
) -> None:
    example = json.loads(path.read_text(encoding="utf-8"))
    known = {
        "task",
        "uuid",
        "args",
        "kwargs",
        "time_pub",
        "timeout",
        "delay",
        "on_duplicate",
        "bind",
    }
    options = {
        k: example[k] for k in ("uuid", "timeout", "delay", "on_duplicate", "bind") if k in example
    }
    submission = await asubmit_task(
        example["task"],
        args=example.get("args"),
        kwargs=example.get("kwargs"),
        extra={k: v for k, v in example.items() if k not in known} or None,
        **options,
    )
    [payload] = received(listener, 1)
    sent = json.loads(payload)
    # The SDK always sets uuid, time_pub (its own clock), args and kwargs.
    added = {k: sent[k] for k in ("uuid", "args", "kwargs") if k not in example}
    assert isinstance(sent.pop("time_pub"), float)
    example.pop("time_pub", None)
    assert sent == {**example, **added}
    assert submission.uuid == sent["uuid"]
