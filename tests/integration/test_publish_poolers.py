"""Through a pooler in transaction mode (pgbouncer), as the config says: nothing prepared, no
LISTEN (which such a pooler loses).

Such a pooler loses a prepared statement between transactions, or hands its name (psycopg's
``_pg3_0``) to another client's server session; publishers are told to use one. What the
SDK's own session holds prepared is read from the server, on that session.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dispatcher.config import reset, setup
from dispatcher.control import control, control_with_reply
from dispatcher.publish import PublishError, close_connections, submit_task
from dispatcher.publish.provider_registry_sync import shared_provider
from support.ctl_here import dispatcherctl
from support.dispatcherd import write_config
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess


@pytest.mark.parametrize("pooled", [True, False])
def test_publishers_marked_as_behind_a_transaction_pooler_prepare_nothing(
    pg_dsn: str, channel: str, pooled: bool
) -> None:
    conninfo = make_conninfo(pg_dsn, application_name=f"pooled_{channel}"[:63])
    pg_notify = {"conninfo": conninfo, "channels": [channel], "transaction_pooler": pooled}
    setup({"version": 1, "brokers": {"pg_notify": pg_notify}})
    try:
        for n in range(10):  # psycopg prepares a statement at its fifth run
            submit_task("myapp.tasks.work", args=[n])
        session = shared_provider(conninfo).connection()
        row = session.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    finally:
        close_connections()
        reset()
    assert row is not None
    assert (row[0] == 0) == pooled


def test_control_replies_are_not_waited_for_through_a_transaction_pooler(
    pg_dsn: str, channel: str, tmp_path: Path
) -> None:
    """Through a pooler in transaction mode the replies' LISTEN was made on a server session
    the pooler lends to other clients: every reply was lost, and ``dispatcherctl alive``
    said that the services, alive, did not answer. The command that waits for none is sent."""
    pg_notify = {"conninfo": pg_dsn, "channels": [channel], "transaction_pooler": True}
    setup({"version": 1, "brokers": {"pg_notify": pg_notify}})
    try:
        with pytest.raises(PublishError, match="cannot wait for control replies through"):
            control_with_reply("alive", timeout=0.1)
        control("set_log_level", {"level": "debug"})  # waits for no reply: sent
    finally:
        close_connections()
        reset()
    config = write_config(tmp_path / "ctl.yml", {"version": 1, "brokers": {"pg_notify": pg_notify}})
    done = dispatcherctl(config, "alive")
    assert done.returncode != 0
    assert "transaction_pooler" in done.stderr
    assert "LISTEN needs a session of its own" in done.stderr, done.stderr


def test_a_service_behind_a_transaction_pooler_listens_for_no_wake_up(
    start_service: Callable[..., ServiceProcess],
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    channel: str,
    evidence: Evidence,
) -> None:
    """Its wake-up listener LISTENed through the pooler: the LISTEN stayed on a server
    session the pooler lends to other clients (who got the wake-ups), and none reached it.
    It says that it polls instead, and does."""
    schema = migrated(pg_conn, unique_schema())
    config = queue_config(pg_dsn, schema, channel, transaction_pooler=True, poll_interval=0.2)
    config["service"]["node_id"] = node = f"pooled-{channel}"[:40]
    service = start_service(config)
    service.wait_for_log("not listening for wake-ups: brokers.pg_queue.transaction_pooler")
    uuids = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
    wait_for_states(pg_conn, schema, uuids, {"done"})
    listening = pg_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
        " AND query LIKE 'LISTEN%%'",
        (f"%{node}%",),
    ).fetchone()
    assert listening == (0,)


def test_a_service_refuses_to_listen_through_a_transaction_pooler(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> None:
    """A service given the publishers' config (``brokers.pg_notify.transaction_pooler``)
    LISTENed through the pooler: tasks and control commands were lost without a word, its
    self-checks failed now and then (a round trip that 'took longer' than its timeout)."""
    service_config["brokers"]["pg_notify"]["transaction_pooler"] = True
    service = start_service(service_config, wait=False)
    assert service.wait() == 2, service.log
    assert "brokers.pg_notify.transaction_pooler is true in" in service.log
    assert "a pool in session mode" in service.log
    assert "listening on channels" not in service.log


@pytest.mark.parametrize("durable", [False, True], ids=["notify", "durable"])
def test_nothing_is_prepared_on_the_callers_connection(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], channel: str, durable: bool
) -> None:
    """The caller's connection (``connection=``) may go through a pooler in transaction mode,
    which the SDK cannot tell: psycopg prepared the SDK's statements on it at their fifth
    run, and the pooler kept them on a server session it lends to other clients."""
    schema = migrated(pg_conn, unique_schema())
    queue = f"{channel}_durable"
    brokers = {
        "pg_notify": {"conninfo": pg_dsn, "channels": [channel]},
        "pg_queue": {"conninfo": pg_dsn, "schema": schema, "queues": [queue]},
    }
    setup({"version": 1, "brokers": brokers})
    try:
        with psycopg.connect(pg_dsn) as caller:
            for n in range(8):
                with caller.transaction():
                    submit_task(
                        "myapp.tasks.work",
                        args=[n],
                        queue=queue if durable else channel,
                        connection=caller,
                    )
            row = caller.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    finally:
        close_connections()
        reset()
    assert row == (0,)
