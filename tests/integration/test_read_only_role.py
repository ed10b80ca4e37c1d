"""A role whose transactions are read-only (``default_transaction_read_only``, as on a
standby) is told so: not taken for a database out of reach.

Every write it sends is refused with SQLSTATE 25006, which says nothing of the cause. The
service names it and waits longer between attempts (its purge too); the SDK raises a
``PublishError`` that no retry cures, saying why; dispatcherctl exits 2, as for the other
refusals.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dispatcher.config import reset, setup
from dispatcher.publish import (
    BrokerUnavailable,
    PublishError,
    aclose_connections,
    asubmit_task,
    close_connections,
    submit_task,
)
from support.durable import own_schema, queue_config
from support.proxy import DatabaseProxy
from support.queue_rows import insert_job
from support.service import TASKS, ServiceProcess

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]

READ_ONLY = "the database or the role is read-only (default_transaction_read_only)"


@pytest.fixture
def read_only(pg_conn: Conn, pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A role with every right on a queue schema's tables, whose transactions are
    read-only: ``(conninfo, schema)``."""
    with own_schema(pg_dsn) as schema:
        role = f"ro_{schema}"
        names = {"role": sql.Identifier(role), "schema": sql.Identifier(schema)}
        for statement in (
            "CREATE ROLE {role} LOGIN",
            "ALTER ROLE {role} SET default_transaction_read_only = on",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT ON {schema}.migrations TO {role}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.jobs TO {role}",
            "GRANT SELECT, INSERT, DELETE ON {schema}.schedule_ticks TO {role}",
        ):
            pg_conn.execute(sql.SQL(statement).format(**names))
        try:
            yield make_conninfo(pg_dsn, user=role), schema
        finally:
            pg_conn.execute(sql.SQL("DROP OWNED BY {role}").format(**names))
            pg_conn.execute(sql.SQL("DROP ROLE {role}").format(**names))


def test_the_sdk_raises_an_error_no_retry_cures_saying_why(
    read_only: tuple[str, str], channel: str
) -> None:
    conninfo, schema = read_only
    queue = {"conninfo": conninfo, "schema": schema, "queues": [channel]}
    setup({"version": 1, "brokers": {"pg_queue": queue}})
    try:
        with pytest.raises(PublishError) as raised:
            submit_task(TASKS + "noop", queue=channel)
    finally:
        close_connections()
        reset()
    assert not isinstance(raised.value, BrokerUnavailable)
    assert READ_ONLY in str(raised.value)
    assert "sending again will not help" in str(raised.value)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_the_sdk_connects_again_after_a_refusal(
    pg_conn: Conn, read_only: tuple[str, str], channel: str, api: str
) -> None:
    """The connection a write was refused on is not kept: the next submission connects
    again, and may reach a server (or a session) that takes it. After a failover behind a VIP
    or a proxy, a connection kept would stay on the standby for ever.

    (A NOTIFY passes in a read-only transaction, refused on a standby only: its send takes
    the same path, the SDK's shared connection.)"""
    conninfo, schema = read_only
    queue = {"conninfo": conninfo, "schema": schema, "queues": [channel]}
    setup({"version": 1, "brokers": {"pg_queue": queue}})
    role = sql.Identifier(str(conninfo_to_dict(conninfo)["user"]))

    def mend() -> None:  # for the sessions opened from now on
        pg_conn.execute(sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(role))

    try:
        if api == "sync":
            with pytest.raises(PublishError, match="read-only"):
                submit_task(TASKS + "noop", queue=channel)
            mend()
            submit_task(TASKS + "noop", queue=channel)
        else:

            async def submit_twice() -> None:
                try:
                    with pytest.raises(PublishError, match="read-only"):
                        await asubmit_task(TASKS + "noop", queue=channel)
                    mend()
                    await asubmit_task(TASKS + "noop", queue=channel)
                finally:
                    await aclose_connections()

            asyncio.run(submit_twice())
    finally:
        close_connections()
        reset()


def test_dispatcherctl_refuses_with_exit_status_2_saying_why(
    pg_conn: Conn, read_only: tuple[str, str], tmp_path: Path
) -> None:
    conninfo, schema = read_only
    waiting = insert_job(pg_conn, schema, queue="jobs")
    config = tmp_path / "dispatcher.yml"
    for where in (schema, f"{schema}_new"):  # the tables at the latest version, then none
        config.write_text(json.dumps(queue_config(conninfo, where, "jobs")))
        command = ["migrate"] if where != schema else ["cancel-job", "--uuid", waiting]
        done = subprocess.run(
            [sys.executable, "-m", "dispatcher.server.ctl", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert READ_ONLY in done.stderr


def test_the_service_says_why_and_waits_longer_each_time(
    start_service: Callable[..., ServiceProcess], read_only: tuple[str, str], channel: str
) -> None:
    conninfo, schema = read_only
    # A round of upkeep every third of a second, each with a purge (keep_finished: 0).
    config = queue_config(conninfo, schema, channel, lease=1, keep_finished=0)
    service = start_service(config, log_level="DEBUG")
    claims = service.wait_for_log(r"cannot claim jobs: ")
    assert READ_ONLY in claims[0]
    # Each refused purge makes the next wait, on a new connection, twice as long as the
    # last (0.1 s at first): the working connection logs the delay (at DEBUG after the first
    # line), until it passes 1.4 s (five refusals in a row), where a round of upkeep comes
    # every third of a second.
    longer = r"retrying in (1\.[4-9]|[2-9]\.\d|\d\d+\.\d) s"
    waits = service.wait_for_log(r"failed \(cannot execute DELETE .*" + longer, timeout=30)
    assert READ_ONLY in waits[0]
    purges = [line for line in service.log.splitlines() if "purge of finished jobs" in line]
    refused = [line for line in purges if "cannot execute DELETE" in line]
    assert refused
    assert all(READ_ONLY in line for line in refused)
    assert service.stop() == 0


def test_a_connection_to_several_hosts_says_why_each_failed(
    read_only: tuple[str, str], pg_dsn: str, channel: str, tmp_path: Path
) -> None:
    """A standby (here a read-only session) up, the primary down: each host's failure is
    told, not only libpq's first line, which is the last host's ("Connection refused")."""
    conninfo, _ = read_only
    down = DatabaseProxy(pg_dsn)  # a port where nothing listens
    params = conninfo_to_dict(conninfo)
    several = make_conninfo(
        conninfo,
        host="127.0.0.1,127.0.0.1",
        port=f"{params.get('port') or 5432},{down.port}",
        target_session_attrs="read-write",
    )
    config = tmp_path / "dispatcher.yml"
    brokers = {"pg_notify": {"conninfo": several, "channels": [channel]}}
    config.write_text(json.dumps({"version": 1, "brokers": brokers}))
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", "alive", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "session is read-only" in done.stderr
    assert "Connection refused" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
