"""A service with no connection slot left for one of the connections its work needs.

A role's ``CONNECTION LIMIT`` stands for a server near ``max_connections``: the service
gets some of its connections and not the others. It claimed jobs on its claiming connection
though its working one (outcomes, lease renewals), opened later, could not be opened: the
jobs ran, their outcomes were never written, their leases ran out, and they ran again
elsewhere. Control replies needed a connection more, opened by the first reply: none came.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


@pytest.fixture
def role(pg_conn: Conn, schema: str) -> Iterator[str]:
    """A login role (not a superuser: the limit spares those) that may use the tables."""
    name = f"slots_{schema}"
    ident, where = sql.Identifier(name), sql.Identifier(schema)
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        for grant in (
            "GRANT USAGE ON SCHEMA {} TO {}",
            "GRANT ALL ON ALL TABLES IN SCHEMA {} TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA {} TO {}",
        ):
            pg_conn.execute(sql.SQL(grant).format(where, ident))
        yield name
    finally:
        pg_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name]
        )
        pg_conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def limit_connections(conn: Conn, role: str, limit: int) -> None:
    conn.execute(
        sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
            sql.Identifier(role), sql.Literal(limit)
        )
    )


def test_no_job_is_claimed_while_its_outcome_could_not_be_written(
    start_service: Start,
    pg_conn: Conn,
    pg_dsn: str,
    schema: str,
    channel: str,
    role: str,
    evidence: Evidence,
) -> None:
    """Two slots for the role: the wake-up listener and one more. The service claims
    nothing (the jobs stay queued, never attempted) and says why; once the limit is
    raised, each job runs once."""
    limit_connections(pg_conn, role, 2)
    config = queue_config(make_conninfo(pg_dsn, user=role), schema, channel, poll_interval=0.2)
    service = start_service(config, log_level="DEBUG")
    uuids = enqueue(
        pg_conn, schema, channel, [job_message("record", evidence.path, n) for n in range(3)]
    )
    # The working connection opens first (the claiming one then finds no slot), or not.
    why = r"cannot claim jobs: .*too many connections for role"
    service.wait_for_log(why, count=4, timeout=20)  # (the repeats at DEBUG)
    rows = wait_for_states(pg_conn, schema, uuids, {"queued"})
    assert [row["attempts"] for row in rows] == [0, 0, 0]
    assert evidence.records() == []
    # Said once at WARNING (the repeats, one per attempt, at DEBUG only).
    warnings = [line for line in service.log.splitlines() if " WARNING " in line]
    assert len([line for line in warnings if re.search(why, line)]) == 1, warnings
    assert len(warnings) <= 3, warnings  # that, the working connection's, and the claims'

    limit_connections(pg_conn, role, 10)
    rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
    assert [row["attempts"] for row in rows] == [1, 1, 1]
    assert sorted(record["args"][0] for record in evidence.records()) == [0, 1, 2]
    service.wait_for_log(r"claiming jobs again after \d+ failures")


def test_control_replies_need_no_connection_of_their_own(
    start_service: Start,
    pg_conn: Conn,
    pg_dsn: str,
    schema: str,
    channel: str,
    role: str,
    tmp_path: Path,
    evidence: Evidence,
) -> None:
    """The role may hold the connections docs/deployment.md counts for pg_notify and
    pg_queue (1 + 3) and no more: control commands get their replies, jobs run."""
    conninfo = make_conninfo(pg_dsn, user=role)
    config = queue_config(conninfo, schema, channel)
    control = f"{channel}_ctl"
    config["brokers"]["pg_notify"] = {"conninfo": conninfo, "channels": [control]}
    config["service"]["node_id"] = f"slots-{channel}"
    service = start_service(config)
    [job] = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
    wait_for_states(pg_conn, schema, [job], {"done"})  # every connection is open now
    limit_connections(pg_conn, role, 4)
    ctl_config = tmp_path / "ctl.yml"
    ctl_config.write_text(
        json.dumps(
            {
                "version": 1,
                "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [control]}},
            }
        )
    )
    for _ in range(2):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.server.ctl",
                "alive",
                "--expected-replies",
                "1",
                "--json",
                "--config",
                str(ctl_config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (done.stdout, done.stderr, service.log)
        assert len(json.loads(done.stdout)) == 1
    # A control command stored as a row: its reply goes out on the working connection.
    reply_to = f"reply_{channel}"
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(reply_to)))
        command = {"control": "alive", "reply_to": reply_to, "uuid": f"u-{channel}"}
        enqueue(pg_conn, schema, channel, [command])
        replies = [json.loads(n.payload) for n in listener.notifies(timeout=10, stop_after=1)]
    assert [reply["node_id"] for reply in replies] == [service.config["service"]["node_id"]]
    [job] = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 2)])
    wait_for_states(pg_conn, schema, [job], {"done"})
    assert "could not send a control reply" not in service.log
