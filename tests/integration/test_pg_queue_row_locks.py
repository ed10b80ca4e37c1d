"""The pg_queue broker when another session holds a lock on one of its rows.

An operator's transaction, an application's ``SELECT ... FOR UPDATE``: a row lock on one job
must cost no other job its lease (taken for lost, swept by another service and run twice),
nor hold up the outcomes of the others; the job's own outcome waits until the lock is
released, then is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.durable import enqueue, job_message, jobs, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def test_a_row_locked_by_another_session_costs_no_other_job_its_lease(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    lease = 3
    config = queue_config(pg_dsn, schema, channel, lease=lease, prefetch=0)
    config["service"].update(node_id="lock-a", pool={"min_workers": 3, "max_workers": 3})
    holder = start_service(config)
    messages = [
        job_message("sleep_then_record", evidence.path, 2, "locked"),
        job_message("sleep_then_record", evidence.path, 5 * lease, "other"),
        job_message("sleep_then_record", evidence.path, 3, "third"),
    ]
    locked, other, third = enqueue(pg_conn, schema, channel, messages)
    evidence.wait_for(3)  # all running on the first service
    with psycopg.connect(pg_dsn) as session:
        state = session.execute(
            sql.SQL("SELECT state FROM {} WHERE uuid = %s FOR UPDATE").format(
                sql.Identifier(schema, "jobs")
            ),
            [locked],
        ).fetchone()
        assert state == ("running",)
        # A second service, with free workers: it takes back whatever lease runs out.
        config = queue_config(pg_dsn, schema, channel, lease=lease, prefetch=0)
        config["service"].update(node_id="lock-b")
        sweeper = start_service(config)
        # The locked job ends meanwhile; for twice the lease, the other one stays the first
        # service's, in its first attempt (its lease renewed).
        deadline = time.monotonic() + 2 * lease
        while time.monotonic() < deadline:
            [row] = jobs(pg_conn, schema, [other])
            assert (row["state"], row["node_id"], row["attempts"]) == ("running", "lock-a", 1)
            time.sleep(0.1)
        ends = [r["label"] for r in evidence.records() if r.get("event") == "end"]
        assert sorted(ends) == ["locked", "third"]
        # The outcome of a job whose row is not locked is recorded all the same.
        [row] = wait_for_states(pg_conn, schema, [third], {"done"}, timeout=lease)
        assert (row["node_id"], row["attempts"]) == ("lock-a", 1)
        holder.wait_for_log(
            rf"INFO .*1 lease not renewed this round: their rows stayed locked by another "
            rf"transaction.* \(uuid {locked}\)"
        )
        holder.wait_for_log(rf"WARNING .*1 lease at risk of running out: .* \(uuid {locked}\)")
        holder.wait_for_log(
            rf"outcome not recorded yet: their rows stayed locked by another transaction.*{locked}"
        )
        # The locked row's own lease ran out meanwhile: no other service may take it back
        # once the lock is released (this one would, before its next renewal).
        assert sweeper.stop() == 0
        session.rollback()
    rows = wait_for_states(pg_conn, schema, [locked], {"done"}, timeout=10)
    assert rows[0]["attempts"] == 1
    rows = wait_for_states(pg_conn, schema, [other], {"done"}, timeout=6 * lease)
    assert rows[0]["attempts"] == 1
    starts = [r["label"] for r in evidence.records() if r.get("event") == "start"]
    assert sorted(starts) == ["locked", "other", "third"]  # none ran twice
    assert "did not answer" not in holder.log
    assert "lost the claim" not in holder.log
