"""Publishing with several configs in one process: ``dispatcher.config.using`` blocks.

Two databases, each with its durable queue's tables and a NOTIFY channel: config A on the
test database, config B (the process-wide one) on a database of its own. Each block's
submissions, jobs read back, control commands and signatures follow its config, and
never leak into another thread's or asyncio task's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dispatcher.config import Settings, install, load_settings, reset, setup, using
from dispatcher.control import control
from dispatcher.publish import (
    InvalidSubmission,
    aclose_connections,
    aget_job,
    asubmit_task,
    batch,
    close_connections,
    get_job,
    submit_task,
)
from support import tasks
from support.durable import jobs, own_schema
from support.postgres import own_database, unique_channel, wait_for_notifies
from support.service import wait_until

QUEUE = "orders"
"""The durable queue of both configs: one name, two databases."""

KEY = {"id": "key-a", "secret": "a" * 32}
"""Config A's signing key (config B has none)."""


@dataclass
class Side:
    """One config, its database and schema, and a connection to that database."""

    settings: Settings
    dsn: str
    schema: str
    conn: psycopg.Connection[Any]

    def uuids(self) -> set[str]:
        """The uuids of the jobs stored in this side's table."""
        return {str(row["uuid"]) for row in jobs(self.conn, self.schema)}


def _config(dsn: str, schema: str, channel: str, signed: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 1,
        "brokers": {
            "pg_notify": {"conninfo": dsn, "channels": [channel]},
            "pg_queue": {"conninfo": dsn, "schema": schema, "queues": [QUEUE]},
        },
    }
    if signed:
        config["security"] = {"keys": [KEY]}
    return config


@pytest.fixture
def channel() -> str:
    """The NOTIFY channel of both configs (one name, two databases)."""
    return unique_channel()


@pytest.fixture(scope="module")
def other_dsn(pg_dsn: str) -> Iterator[str]:
    """A second database, config B's."""
    with own_database(pg_dsn) as dsn:
        if dsn == pg_dsn:
            pytest.skip("no right to create a second database")
        yield dsn


@pytest.fixture
def sides(pg_dsn: str, other_dsn: str, channel: str) -> Iterator[tuple[Side, Side]]:
    """Config A (test database, signed) and config B (its own database), B set up globally."""
    with (
        own_schema(pg_dsn) as schema_a,
        own_schema(other_dsn) as schema_b,
        psycopg.connect(pg_dsn, autocommit=True) as conn_a,
        psycopg.connect(other_dsn, autocommit=True) as conn_b,
    ):
        a = load_settings(_config(pg_dsn, schema_a, channel, signed=True), source="config A")
        b = setup(_config(other_dsn, schema_b, channel, signed=False), source="config B")
        yield Side(a, pg_dsn, schema_a, conn_a), Side(b, other_dsn, schema_b, conn_b)
        close_connections()
        reset()


def test_a_durable_job_under_using_lands_in_its_configs_table(sides: tuple[Side, Side]) -> None:
    a, b = sides
    with using(a.settings) as given:
        assert given is a.settings
        in_a = submit_task(tasks.add, args=[1, 2], queue=QUEUE)
        with batch():
            batched = [submit_task(tasks.add, args=[n, n], queue=QUEUE) for n in range(3)]
        assert get_job(in_a.uuid) is not None
    in_b = submit_task(tasks.add, args=[3, 4], queue=QUEUE)
    assert a.uuids() == {in_a.uuid, *(s.uuid for s in batched)}
    assert b.uuids() == {in_b.uuid}
    assert get_job(in_a.uuid) is None  # config B's table again
    assert get_job(in_b.uuid) is not None


def test_threads_with_different_configs_do_not_leak(sides: tuple[Side, Side]) -> None:
    a, b = sides
    rounds = 20
    # Each round, every thread submits once before any goes on: the submissions interleave.
    barrier = threading.Barrier(3, timeout=30)
    sent: dict[str, list[str]] = {"a": [], "b": [], "global": []}
    failures: list[BaseException] = []

    def publish(name: str, settings: Settings | None) -> None:
        try:
            for n in range(rounds):
                barrier.wait()
                if settings is None:
                    sent[name].append(submit_task(tasks.add, args=[n, 0], queue=QUEUE).uuid)
                else:
                    with using(settings):
                        sent[name].append(submit_task(tasks.add, args=[n, 0], queue=QUEUE).uuid)
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=publish, args=("a", a.settings)),
        threading.Thread(target=publish, args=("b", b.settings)),
        threading.Thread(target=publish, args=("global", None)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert a.uuids() == set(sent["a"])
    assert len(sent["a"]) == rounds
    assert b.uuids() == {*sent["b"], *sent["global"]}


def test_asyncio_tasks_keep_their_own_config(sides: tuple[Side, Side]) -> None:
    a, b = sides

    async def publish(settings: Settings | None) -> list[str]:
        uuids = []
        for n in range(10):
            if settings is None:
                submission = await asubmit_task(tasks.add, args=[n, 1], queue=QUEUE)
            else:
                with using(settings):
                    submission = await asubmit_task(tasks.add, args=[n, 1], queue=QUEUE)
            uuids.append(submission.uuid)
            await asyncio.sleep(0)  # let the other task submit in between
        return uuids

    async def main() -> tuple[list[str], list[str], bool]:
        try:
            in_a, in_b = await asyncio.gather(publish(a.settings), publish(None))
            with using(a.settings):
                # A task started in the block copies its context, config included.
                found = await asyncio.create_task(aget_job(in_a[0]))
            return in_a, in_b, found is not None
        finally:
            await aclose_connections()

    in_a, in_b, found = asyncio.run(main())
    assert (a.uuids(), b.uuids(), found) == (set(in_a), set(in_b), True)


def test_notifies_signatures_and_control_follow_the_block(
    sides: tuple[Side, Side], channel: str
) -> None:
    a, b = sides
    for side in sides:
        side.conn.execute(f'LISTEN "{channel}"')
    with using(a.settings):
        submit_task(tasks.add, args=[1, 1], queue=channel)
        control("status", queue=channel)
    submit_task(tasks.add, args=[2, 2], queue=channel)
    in_a = [json.loads(n.payload) for n in wait_for_notifies(a.conn, 2)]
    in_b = [json.loads(n.payload) for n in wait_for_notifies(b.conn, 1)]
    assert [(m["key_id"], json.loads(m["body"]).get("control")) for m in in_a] == [
        ("key-a", None),
        ("key-a", "status"),
    ]
    assert [(m["task"], m["args"]) for m in in_b] == [("support.tasks.add", [2, 2])]
    assert wait_for_notifies(b.conn, 1, timeout=0.2) == []


def test_a_batch_sends_with_the_config_in_force_where_it_opened(sides: tuple[Side, Side]) -> None:
    a, b = sides
    install(a.settings)
    opened, switched = threading.Event(), threading.Event()
    sent: list[str] = []
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            with batch():
                sent.append(submit_task(tasks.add, args=[1, 1], queue=QUEUE).uuid)
                opened.set()
                switched.wait(10)  # another thread sets up config B meanwhile
                sent.append(submit_task(tasks.add, args=[2, 2], queue=QUEUE).uuid)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    assert opened.wait(10)
    setup(_config(b.dsn, b.schema, "unused", signed=False))
    switched.set()
    thread.join(10)
    assert failures == []
    assert a.uuids() == set(sent)
    assert b.uuids() == set()
    in_b = submit_task(tasks.add, args=[3, 3], queue=QUEUE)  # the new config's, once ended
    assert b.uuids() == {in_b.uuid}


def test_a_batch_holds_only_its_own_configs_submissions(sides: tuple[Side, Side]) -> None:
    a, b = sides
    with batch():
        in_b = submit_task(tasks.add, args=[1, 1], queue=QUEUE)
        with using(a.settings):
            with pytest.raises(InvalidSubmission, match=r"prepared under another config than"):
                submit_task(tasks.add, args=[2, 2], queue=QUEUE)
            with batch():  # sent by itself, to config A, when it ends
                in_a = submit_task(tasks.add, args=[3, 3], queue=QUEUE)
            assert a.uuids() == {in_a.uuid}
        assert b.uuids() == set()
    assert b.uuids() == {in_b.uuid}


def _sdk_connections(conn: psycopg.Connection[Any], name: str) -> list[int]:
    """The server pids of the connections named *name* (the SDK's, given that name)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid", (name,)
    ).fetchall()
    return [pid for (pid,) in rows]


def _named(dsn: str, name: str) -> str:
    return make_conninfo(dsn, application_name=name)


def test_a_new_config_lets_go_of_the_connections_it_no_longer_needs(
    sides: tuple[Side, Side], channel: str
) -> None:
    a, b = sides
    name = unique_channel("sdk")
    setup(_config(_named(a.dsn, name), a.schema, channel, signed=False))
    submit_task(tasks.add, args=[1, 1], queue=channel)
    [pid] = _sdk_connections(a.conn, name)
    inside, done = threading.Event(), threading.Event()
    pids: list[list[int]] = []
    old = load_settings(_config(_named(a.dsn, name), a.schema, channel, signed=False))

    def in_a_block() -> None:
        with using(old):
            inside.set()
            done.wait(10)
            submit_task(tasks.add, args=[2, 2], queue=channel)
            pids.append(_sdk_connections(a.conn, name))

    thread = threading.Thread(target=in_a_block)
    thread.start()
    assert inside.wait(10)
    install(b.settings)  # a block still uses the database: its connection stays
    done.set()
    thread.join(10)
    assert pids == [[pid]]
    install(b.settings)  # no block uses it any more: closed
    assert wait_until(lambda: _sdk_connections(a.conn, name) == [], timeout=10)


def test_an_event_loop_lets_go_of_its_connections_no_config_needs(
    sides: tuple[Side, Side], channel: str
) -> None:
    a, b = sides
    name = unique_channel("sdk")
    setup(_config(_named(a.dsn, name), a.schema, channel, signed=False))

    async def main() -> tuple[list[int], list[int]]:
        try:
            await asubmit_task(tasks.add, args=[1, 1], queue=channel)
            opened = _sdk_connections(a.conn, name)
            install(b.settings)
            await asubmit_task(tasks.add, args=[2, 2], queue=channel)
            deadline = time.monotonic() + 10
            while _sdk_connections(a.conn, name) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return opened, _sdk_connections(a.conn, name)
        finally:
            await aclose_connections()

    opened, left = asyncio.run(main())
    assert (len(opened), left) == (1, [])
