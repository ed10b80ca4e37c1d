"""Outcomes that come after their lease ran out: a service frozen (every process SIGSTOPped)
for longer than the lease, while another service takes its jobs back, then resumed.

The fence refuses an outcome whose row was claimed again (the job may run twice): each one
is logged with its job's uuid. A row the sweep failed as lost (no attempt left) that
nobody claimed since takes the outcome: the job was not lost, it ran.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.durable import enqueue, job_message, jobs, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess, children, wait_until

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]
LEASE = 2


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def node_config(pg_dsn: str, schema: str, queue: str, node: str) -> dict[str, Any]:
    config = queue_config(pg_dsn, schema, queue, lease=LEASE, prefetch=0)
    config["service"].update(node_id=node, pool={"min_workers": 2, "max_workers": 2})
    return config


@contextmanager
def frozen(service: ServiceProcess) -> Iterator[None]:
    """Every process of *service* stopped (SIGSTOP) meanwhile; continued after."""
    pids = [service.pid, *children(service.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def leases_lapsed(conn: Conn, schema: str, uuids: list[str]) -> bool:
    query = sql.SQL("SELECT bool_and(lease_until < now()) FROM {} WHERE uuid = ANY(%s)").format(
        sql.Identifier(schema, "jobs")
    )
    return conn.execute(query, (uuids,)).fetchone() == (True,)


def test_every_refused_outcome_is_logged_with_its_uuid(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """Two outcomes refused 0.4 s apart: the second was held back by a rate limit, and the
    line saying so was cut before its uuid."""
    first = start_service(node_config(pg_dsn, schema, channel, "late-a"))
    messages = [
        job_message("step_then_give_back", evidence.path, seconds, label)
        for seconds, label in ((3, "one"), (3.4, "two"))
    ]
    uuids = enqueue(pg_conn, schema, channel, messages)
    evidence.wait_for(2)  # both started on the first service
    with frozen(first):
        wait_until(lambda: leases_lapsed(pg_conn, schema, uuids), timeout=20)
        start_service(node_config(pg_dsn, schema, channel, "late-b"))  # takes them back
        wait_until(
            lambda: all(row["node_id"] == "late-b" for row in jobs(pg_conn, schema, uuids)),
            timeout=20,
        )
    for uuid in uuids:
        first.wait_for_log(rf"not recorded: .* uuids .*{uuid}", timeout=15)
    assert "suppressed" not in first.log


def test_a_late_outcome_is_recorded_over_the_sweeps_worker_lost(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """``max_attempts: 1`` jobs swept as lost (failed, ``worker_lost``: "the service died")
    while their service was frozen, which then finished them: they stayed failed, no result,
    as if they had never run."""
    first = start_service(node_config(pg_dsn, schema, channel, "late-c"))
    messages = [
        job_message("step_then_give_back", evidence.path, 3, "ok", {"answer": 42}),
        job_message("step_then_give_back", evidence.path, 3, "error", "fail"),
    ]
    uuids = enqueue(pg_conn, schema, channel, messages, max_attempts=1)
    evidence.wait_for(2)  # both started on the first service
    with frozen(first):
        wait_until(lambda: leases_lapsed(pg_conn, schema, uuids), timeout=20)
        start_service(node_config(pg_dsn, schema, channel, "late-d"))  # sweeps at start
        swept = wait_for_states(pg_conn, schema, uuids, {"failed"})
        assert [row["outcome"] for row in swept] == ["worker_lost", "worker_lost"]
    wait_until(
        lambda: [row["outcome"] for row in jobs(pg_conn, schema, uuids)] == ["ok", "error"],
        timeout=15,
    )
    done, failed = jobs(pg_conn, schema, uuids)
    assert (done["state"], done["attempts"], done["result"]) == ("done", 1, {"answer": 42})
    assert done["last_error"] is None
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert "error failed after its run" in failed["last_error"]
    for uuid in uuids:
        first.wait_for_log(rf"\(uuid {uuid}\) ended in .* failed as lost")
    assert "not recorded" not in first.log
    starts = [r["label"] for r in evidence.records() if r.get("event") == "start"]
    assert sorted(starts) == ["error", "ok"]  # each ran once: the other service ran neither
