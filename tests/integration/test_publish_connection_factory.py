"""``brokers.pg_notify.connection_factory``: tasks sent on the application's own connection.

What a LISTENing connection receives, and when: a submission joins the transaction of the
connection the factory returns, as with ``connection=``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import Settings, reset, setup
from dispatcher.control import control
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
from support import app_connections, tasks
from support.postgres import wait_for_notifies

Conn = psycopg.Connection[Any]

FACTORIES = "support.app_connections"


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture
def app_conn(pg_dsn: str) -> Iterator[Conn]:
    """The application's connection, in a transaction, handed out by the sync factory."""
    with psycopg.connect(pg_dsn) as conn:
        app_connections.current = conn
        app_connections.calls.clear()
        yield conn
    app_connections.current = None


def configure(pg_dsn: str, channel: str, layout: int = 1, **factories: str) -> Settings:
    """pg_notify on *channel*, with the factories given (by the keys of *layout*)."""
    if layout == 2:  # dispatcherd's, as an AWX-shaped application builds it
        pg = {"config": {"conninfo": pg_dsn}, "channels": [channel], **factories}
        return setup({"version": 2, "brokers": {"pg_notify": pg}})
    pg = {"conninfo": pg_dsn, "channels": [channel], **factories}
    return setup({"version": 1, "brokers": {"pg_notify": pg}})


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    close_connections()
    reset()


def payloads(listener: Conn, count: int, timeout: float = 5) -> list[str]:
    return [n.payload for n in wait_for_notifies(listener, count, timeout)]


@pytest.mark.parametrize(
    ("layout", "key"), [(1, "connection_factory"), (2, "sync_connection_factory")]
)
def test_a_task_is_sent_when_the_application_commits(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str, layout: int, key: str
) -> None:
    configure(pg_dsn, channel, layout, **{key: f"{FACTORIES}.connection"})
    submission = tasks.add.delay(1, 2)
    assert payloads(listener, 1, timeout=0.3) == []  # not before the commit
    app_conn.commit()
    assert payloads(listener, 1) == [submission.payloads[0]]
    # Called with the connection config as keywords, as dispatcherd calls it with its config.
    assert app_connections.calls == [{"conninfo": pg_dsn}]


def test_a_rolled_back_transaction_sends_nothing(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str
) -> None:
    configure(pg_dsn, channel, connection_factory=f"{FACTORIES}.connection")
    submit_task("support.tasks.add", args=[1, 2])
    with batch():
        tasks.add.delay(3, 4)
        tasks.add.delay(5, 6)
    app_conn.rollback()
    tasks.add.delay(7, 8)
    app_conn.commit()
    assert [json.loads(p)["args"] for p in payloads(listener, 1)] == [[7, 8]]
    assert payloads(listener, 1, timeout=0.3) == []


def test_control_commands_act_at_once_whatever_the_applications_transaction(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str
) -> None:
    configure(pg_dsn, channel, connection_factory=f"{FACTORIES}.connection")
    control("cancel", {"uuid": "u-1"})
    assert [json.loads(p)["control"] for p in payloads(listener, 1)] == ["cancel"]
    app_conn.rollback()
    assert app_connections.calls == []


def test_dispatcherctl_submit_sends_on_its_own_connection(
    tmp_path: Path, listener: Conn, pg_dsn: str, channel: str
) -> None:
    # The command line has no application transaction: the factory (which would need the
    # application set up, Django's say) is not called.
    config = tmp_path / "dispatcher.yml"
    pg = {"conninfo": pg_dsn, "channels": [channel], "connection_factory": "app.db.missing"}
    config.write_text(json.dumps({"version": 1, "brokers": {"pg_notify": pg}}))
    command = [sys.executable, "-m", "dispatcher.server.ctl", "--config", str(config)]
    sent = subprocess.run(
        [*command, "submit", "support.tasks.add", "--args", "[1, 2]"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert [json.loads(p)["args"] for p in payloads(listener, 1)] == [[1, 2]]


def test_a_connection_passed_to_the_call_wins(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str
) -> None:
    configure(pg_dsn, channel, connection_factory=f"{FACTORIES}.connection")
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        submission = tasks.add.apply_async(args=[1, 2], connection=other)
    assert payloads(listener, 1) == [submission.payloads[0]]  # app_conn never committed
    assert app_connections.calls == []


@pytest.mark.anyio
async def test_asyncio_publishers_use_the_async_factory(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str
) -> None:
    configure(
        pg_dsn,
        channel,
        connection_factory=f"{FACTORIES}.connection",
        async_connection_factory=f"{FACTORIES}.aconnection",
    )
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn:
            app_connections.current_async = aconn
            await asubmit_task("support.tasks.add", args=[1, 2])
            async with abatch():
                await tasks.add.adelay(3, 4)
            assert payloads(listener, 1, timeout=0.3) == []
            await aconn.commit()
        assert [json.loads(p)["args"] for p in payloads(listener, 2)] == [[1, 2], [3, 4]]
    finally:
        app_connections.current_async = None
        await aclose_connections()


@pytest.mark.anyio
async def test_without_an_async_factory_asyncio_publishers_use_their_own_connection(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str
) -> None:
    configure(pg_dsn, channel, connection_factory=f"{FACTORIES}.connection")
    try:
        await tasks.add.adelay(1, 2)
        assert [json.loads(p)["args"] for p in payloads(listener, 1)] == [[1, 2]]
    finally:
        await aclose_connections()
    assert app_connections.calls == []


@pytest.mark.parametrize(
    ("factory", "kind", "message"),
    [
        (
            "support.no_such_module.connection",
            PublishError,
            "cannot submit tasks: brokers.pg_notify.connection_factory "
            "'support.no_such_module.connection' cannot be imported: No module named "
            "'support.no_such_module'",
        ),
        (
            f"{FACTORIES}.missing",
            PublishError,
            "cannot submit tasks: brokers.pg_notify.connection_factory "
            f"'{FACTORIES}.missing' module {FACTORIES} has no 'missing'",
        ),
        (
            f"{FACTORIES}.not_a_function",
            PublishError,
            "cannot submit tasks: brokers.pg_notify.connection_factory "
            f"'{FACTORIES}.not_a_function' is a int, not a function",
        ),
        (
            f"{FACTORIES}.broken",
            PublishError,
            f"cannot submit tasks: brokers.pg_notify.connection_factory ({FACTORIES}.broken) "
            "raised RuntimeError: the application is not set up yet",
        ),
        (
            f"{FACTORIES}.aconnection",
            PublishError,
            "cannot submit tasks: brokers.pg_notify.connection_factory "
            f"({FACTORIES}.aconnection) is a coroutine function: asyncio publishers take it "
            "as async_connection_factory",
        ),
        (
            f"{FACTORIES}.json",
            PublishError,
            "cannot submit tasks: brokers.pg_notify.connection_factory "
            f"({FACTORIES}.json) returned module, not a psycopg Connection",
        ),
    ],
)
def test_a_factory_that_cannot_give_a_connection_is_one_clear_error(
    app_conn: Conn,
    listener: Conn,
    pg_dsn: str,
    channel: str,
    factory: str,
    kind: type[Exception],
    message: str,
) -> None:
    configure(pg_dsn, channel, connection_factory=factory)
    with pytest.raises(kind) as caught:
        tasks.add.delay(1, 2)
    assert str(caught.value) == message
    assert not isinstance(caught.value, BrokerUnavailable)
    app_conn.commit()
    assert payloads(listener, 1, timeout=0.3) == []


def test_a_closed_or_aborted_application_connection_is_named_in_the_error(
    app_conn: Conn, listener: Conn, pg_dsn: str, channel: str
) -> None:
    configure(pg_dsn, channel, connection_factory=f"{FACTORIES}.connection")
    with pytest.raises(psycopg.errors.DivisionByZero):
        app_conn.execute("SELECT 1/0")
    with pytest.raises(BrokerUnavailable) as caught:
        tasks.add.delay(1, 2)
    assert str(caught.value) == (
        "cannot use the connection from brokers.pg_notify.connection_factory "
        f"({FACTORIES}.connection): its transaction is aborted (an earlier statement failed), "
        "so it takes no more statements until it is rolled back; nothing was sent"
    )
    app_conn.rollback()
    app_conn.close()
    with pytest.raises(
        BrokerUnavailable, match=r"^cannot use the connection from .*: it is closed"
    ):
        tasks.add.delay(1, 2)
    assert payloads(listener, 1, timeout=0.3) == []
