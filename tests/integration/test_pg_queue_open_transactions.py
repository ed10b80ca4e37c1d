"""The pg_queue broker while a publisher's transaction stays open for a long time.

A web request that stored a job in its own transaction (``apply_async(connection=...)``)
and then waits, for minutes, before it commits: the rows it wrote are invisible to the
services until then, but its index entries are not, and a unique index makes a statement
that would write the same key wait for that transaction. Such a transaction must cost the
services nothing beyond the job it holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dispatcher.schema import duplicate_key, new_uuid
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(120)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def store(conn: Conn, schema: str, queue: str, message: dict[str, Any], state: str) -> str:
    """Store *message* in *conn*'s transaction; return its uuid.

    ``queued``: as a publisher does; ``lost``: running on a service that died a minute ago
    (its lease ran out).
    """
    mode = message.get("on_duplicate")
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (uuid, queue, task, message, max_attempts, on_duplicate, dup_key,"
            " state, attempts, claims, node_id, started_at, lease_until)"
            " VALUES (%(uuid)s, %(queue)s, %(task)s, %(message)s, 3, %(mode)s, %(key)s,"
            " %(state)s, %(attempts)s, %(attempts)s, %(node)s,"
            " CASE WHEN %(lost)s THEN now() - interval '2 minutes' END,"
            " CASE WHEN %(lost)s THEN now() - interval '1 minute' END)"
        ).format(sql.Identifier(schema, "jobs")),
        {
            "uuid": message["uuid"],
            "queue": queue,
            "task": message["task"],
            "message": json.dumps(message),
            "mode": mode,
            "key": None if mode is None else duplicate_key(message),
            "state": "running" if state == "lost" else state,
            "attempts": 1 if state == "lost" else 0,
            "node": "gone" if state == "lost" else None,
            "lost": state == "lost",
        },
    )
    return str(message["uuid"])


@pytest.mark.parametrize("started", ["before", "during"])
def test_a_queue_one_twin_in_an_open_transaction_holds_up_no_other_job(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
    started: str,
) -> None:
    """A queue_one job whose service died, and its twin stored in a transaction left open.

    The sweep that puts the dead service's job back to wait meets the twin's index entry
    and waited for the twin's transaction: it failed at its time limit, at every round, so
    no expired lease of any job was taken back while the transaction stayed open; and a
    service starting meanwhile, which sweeps as its claiming connection opens, could not
    open it, and claimed nothing at all.
    """
    config = queue_config(pg_dsn, schema, channel, lease=2, prefetch=0)
    service = None
    if started == "before":  # claiming already: its first sweep is behind it
        service = start_service(config)
        first = job_message("record", evidence.path, "first")
        wait_for_states(pg_conn, schema, enqueue(pg_conn, schema, channel, [first]), {"done"})
    twin = job_message("record", evidence.path, "twin", on_duplicate="queue_one")
    dead_twin = store(pg_conn, schema, channel, twin, "lost")
    dead_other = store(
        pg_conn, schema, channel, job_message("record", evidence.path, "lost"), "lost"
    )
    with psycopg.connect(pg_dsn) as publisher:  # (its transaction stays open)
        store(publisher, schema, channel, {**twin, "uuid": new_uuid()}, "queued")
        if service is None:
            service = start_service(config)
        fresh = job_message("record", evidence.path, "new")
        (new,) = enqueue(pg_conn, schema, channel, [fresh])
        rows = wait_for_states(pg_conn, schema, [dead_other, new], {"done"}, timeout=20)
        assert [row["attempts"] for row in rows] == [2, 1]
        publisher.rollback()
    # Once the transaction ended (rolled back: no twin), the dead service's queue_one job
    # goes back to wait as well, and runs.
    (row,) = wait_for_states(pg_conn, schema, [dead_twin], {"done"}, timeout=20)
    assert row["attempts"] == 2
    labels = sorted(record["args"][0] for record in evidence.records())
    assert labels == sorted(["lost", "new", "twin", *(["first"] if started == "before" else [])])
