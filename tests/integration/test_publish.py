"""The sync publishing API over real PostgreSQL: what a LISTENing connection receives.

Generated from ``test_publish_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import Connection, sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import Settings, reset, setup
from dispatcher.control import control_with_reply
from dispatcher.publish import (
    BrokerUnavailable,
    ChunkAssembler,
    InvalidSubmission,
    PublishError,
    Submission,
    batch,
    close_connections,
    submit_task,
)
from dispatcher.publish.chunking import is_chunk
from support import tasks
from support.paths import EXAMPLES
from support.postgres import unique_channel, wait_for_notifies
from support.proxy import DatabaseProxy, SilentServer
from support.service import wait_until
from support.twins import block_on, connection_of_the_other_kind, gather

Conn = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
def _own_connections_closed() -> Iterator[None]:
    """The SDK's own connections opened by the test are closed when it ends."""
    yield
    close_connections()


def received(listener: Conn, count: int, timeout: float = 5) -> list[str]:
    return [n.payload for n in wait_for_notifies(listener, count, timeout)]


def nothing_more(listener: Conn) -> bool:
    return received(listener, 1, timeout=0.3) == []


def test_delay_sends_exactly_the_message(
    configured: Settings, listener: Conn, channel: str
) -> None:
    submission = tasks.add.delay(2, 3)
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


def test_apply_async_with_options(configured: Settings, listener: Conn, channel: str) -> None:
    submission = tasks.send_email.apply_async(
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


def test_submit_task_by_name(configured: Settings, listener: Conn) -> None:
    submission = submit_task("billing.tasks.charge", args=[1], kwargs={"invoice": 7}, bind=True)
    [payload] = received(listener, 1)
    assert json.loads(payload) == {
        "task": "billing.tasks.charge",
        "uuid": submission.uuid,
        "args": [1],
        "kwargs": {"invoice": 7},
        "time_pub": submission.message["time_pub"],
        "bind": True,
    }


def test_a_refused_submission_sends_nothing(configured: Settings, listener: Conn) -> None:
    with pytest.raises(InvalidSubmission, match="timeout: must be at least 0"):
        tasks.add.apply_async(args=[1, 2], timeout=-1)
    with pytest.raises(InvalidSubmission, match="is not JSON-serialisable"):
        tasks.add.delay(object(), 1)
    assert nothing_more(listener)


def test_transaction_rollback_sends_nothing_commit_sends_once(
    configured: Settings, listener: Conn, pg_dsn: str
) -> None:
    with Connection.connect(pg_dsn) as conn:
        tasks.add.apply_async(args=[1, 1], connection=conn)
        assert nothing_more(listener)  # not before the commit
        conn.rollback()
        assert nothing_more(listener)
        committed = tasks.add.apply_async(args=[2, 2], connection=conn)
        conn.commit()
    assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [committed.uuid]
    assert nothing_more(listener)


def test_100_kb_payload_arrives_as_chunks(configured: Settings, listener: Conn) -> None:
    big = "".join(chr(32 + i % 90) for i in range(100_000))
    submission = tasks.add.delay(big, "é and \u2603")
    payloads = received(listener, len(submission.payloads))
    assert len(payloads) == len(submission.payloads) > 12
    assembler = ChunkAssembler()
    whole = [assembler.add(json.loads(p)) for p in payloads if is_chunk(json.loads(p))]
    assert json.loads(next(w for w in whole if w is not None)) == submission.message


def test_batch_sends_in_order_and_nothing_on_error(configured: Settings, listener: Conn) -> None:
    with batch() as sent:
        for n in range(50):
            tasks.add.delay(n, n)
        assert nothing_more(listener)  # held until the block ends
    assert [json.loads(p)["args"][0] for p in received(listener, 50)] == list(range(50))
    assert len(sent.submissions) == 50

    def failing_block() -> None:
        with batch():
            tasks.add.delay(0, 0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_block()
    assert nothing_more(listener)


def test_a_batch_inside_a_batch_is_all_or_nothing_with_it(
    configured: Settings, listener: Conn
) -> None:
    def outer_fails_after_inner() -> None:
        with batch():
            with batch():
                tasks.add.delay(1, 0)
            raise RuntimeError("outer")

    with pytest.raises(RuntimeError, match="outer"):
        outer_fails_after_inner()
    assert nothing_more(listener)  # the inner block's part went with the outer one

    def inner_fails() -> None:
        with batch():
            tasks.add.delay(3, 0)
            raise RuntimeError("inner")

    with batch():
        tasks.add.delay(2, 0)
        with pytest.raises(RuntimeError, match="inner"):
            inner_fails()
        with batch():
            tasks.add.delay(4, 0)
        assert nothing_more(listener)  # all leaves when the outer block ends
    assert [json.loads(p)["args"][0] for p in received(listener, 2)] == [2, 4]


def test_batch_joins_a_transaction(configured: Settings, listener: Conn, pg_dsn: str) -> None:
    with Connection.connect(pg_dsn) as conn:
        with batch(connection=conn):
            tasks.add.delay(1, 2)
            tasks.add.delay(3, 4)
        assert nothing_more(listener)
        conn.commit()
    assert len(received(listener, 2)) == 2


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


def test_lost_connection_is_reopened_without_losing_the_call(
    pg_dsn: str, channel: str, listener: Conn, pg_conn: Conn
) -> None:
    app_name = configure_with_app_name(pg_dsn, channel)
    tasks.add.delay(0, 0)
    assert len(received(listener, 1)) == 1
    killed = pg_conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app_name,),
    ).fetchall()
    assert killed == [(True,)]
    # Ended while idle: found so before the next send, which goes on a new connection.
    wait_until(lambda: connections_named(pg_conn, app_name) == 0, timeout=5)
    after = tasks.add.delay(1, 1)
    assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [after.uuid]


def test_a_notify_whose_reply_is_lost_is_delivered_once_and_the_call_says_so(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    """The connection breaks once the NOTIFY reached the server: it is not sent again (the
    task would run twice), and the error says the database stopped answering during the
    send, not that it cannot be connected to."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        configure_with_app_name(proxy.dsn, channel)
        tasks.add.delay(0, 0)
        assert len(received(listener, 1)) == 1
        proxy.lose_next_reply()
        with pytest.raises(BrokerUnavailable) as failure:
            tasks.add.delay(1, 1)
        message = str(failure.value)
        assert "the database stopped answering during the send" in message
        assert "may or may not have been delivered" in message
        assert "cannot connect" not in message
        [lost] = received(
            listener, 1, timeout=25
        )  # the server ran it (slow when the machine is busy)
        assert json.loads(lost)["args"] == [1, 1]
        after = tasks.add.delay(2, 2)  # on a new connection
        assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [after.uuid]
    finally:
        proxy.down()


def test_a_batch_whose_reply_is_lost_is_delivered_once(
    pg_dsn: str, channel: str, listener: Conn
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        configure_with_app_name(proxy.dsn, channel)
        tasks.add.delay(0, 0)
        assert len(received(listener, 1)) == 1
        proxy.lose_next_reply()

        def send_three() -> None:
            with batch():
                for n in range(3):
                    tasks.add.delay(n, n)

        with pytest.raises(BrokerUnavailable, match="may or may not have been delivered"):
            send_three()
        delivered = received(listener, 3, timeout=25)  # (the server ran them: slow when busy)
        assert [json.loads(p)["args"] for p in delivered] == [[0, 0], [1, 1], [2, 2]]
        after = tasks.add.delay(9, 9)
        assert [json.loads(p)["uuid"] for p in received(listener, 1)] == [after.uuid]
    finally:
        proxy.down()


def _submit_in_child(config: dict[str, Any], queue: Any) -> None:
    setup(config)
    queue.put(block_on(tasks.add.delay(7, 7)).uuid)


def test_forked_child_uses_its_own_connection(configured: Settings, listener: Conn) -> None:
    tasks.add.delay(0, 0)  # the parent's connection is open before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_submit_in_child, args=(dict(configured.data), results))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    child_uuid = results.get(timeout=5)
    parent_after = tasks.add.delay(1, 1)  # the parent's connection survived the child
    uuids = [json.loads(p)["uuid"] for p in received(listener, 3)]
    assert uuids[1:] == [child_uuid, parent_after.uuid]


def test_concurrent_callers_share_one_connection(pg_dsn: str, channel: str, listener: Conn) -> None:
    proxy = DatabaseProxy(pg_dsn)  # counts the connections opened through it
    proxy.up()
    try:
        configure_with_app_name(proxy.dsn, channel)
        submissions: list[Submission] = []

        def work() -> None:
            for n in range(25):
                submissions.append(tasks.add.delay(n, n))

        gather(*[work] * 8)
        notifications = wait_for_notifies(listener, 200, 5)
        uuids = [json.loads(n.payload)["uuid"] for n in notifications]
        assert sorted(uuids) == sorted(s.uuid for s in submissions)
        # The first caller opens it while the others wait for it: one connection in all.
        assert len({n.pid for n in notifications}) == 1
        assert proxy.accepted == 1
    finally:
        close_connections()
        proxy.down()


def test_callers_waiting_for_a_connection_share_the_failure_to_open_it(
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

        def publish() -> None:
            try:
                tasks.add.delay(1, 2)
            except BrokerUnavailable as exc:
                failures.append(exc)

        gather(*[publish] * 6)
        assert len(failures) == 6
        assert server.accepted == 1
    finally:
        server.close()
        reset()


def test_unreachable_database_is_one_clear_sentence(channel: str) -> None:
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
        tasks.add.delay(1, 2)
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


def test_a_refused_notify_is_a_publish_error_that_no_retry_cures(
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
                tasks.add.delay(1, 2)
            assert not isinstance(caught.value, BrokerUnavailable)
            message = str(caught.value)
            assert message.startswith("cannot send to PostgreSQL at "), message
            assert message.endswith(
                ": it refused the NOTIFY: permission denied for function pg_notify "
                "(SQLSTATE 42501: sending again will not help)"
            ), message
        with pytest.raises(PublishError) as caught:
            control_with_reply("alive", queue=channel, expected_replies=1, timeout=0.1)
        assert not isinstance(caught.value, BrokerUnavailable)
        assert str(caught.value).endswith(
            ": it refused the control command: permission denied for function pg_notify "
            "(SQLSTATE 42501: sending again will not help)"
        )
    finally:
        close_connections()
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


def test_a_connection_of_the_wrong_kind_is_explained(
    configured: Settings, listener: Conn, pg_dsn: str
) -> None:
    wrong = "not a connection"
    with pytest.raises(TypeError, match=refusal("submit_task", Connection, wrong, "asubmit_task")):
        submit_task(tasks.add, args=[1, 2], connection=wrong)  # type: ignore[arg-type]
    # Through the task's method, the refusal names that method.
    with pytest.raises(TypeError, match=refusal("apply_async", Connection, wrong, "aapply_async")):
        tasks.add.apply_async(args=[1, 2], connection=wrong)  # type: ignore[arg-type]
    with (
        connection_of_the_other_kind(pg_dsn, Connection) as other,
        pytest.raises(TypeError, match=refusal("apply_async", Connection, other, "aapply_async")),
    ):
        tasks.add.apply_async(args=[1, 2], connection=other)
    assert nothing_more(listener)


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "task-message" / "valid").glob("*.json")), ids=lambda p: p.stem
)
def test_every_valid_example_can_be_produced(
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
    submission = submit_task(
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
