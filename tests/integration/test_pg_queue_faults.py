"""The pg_queue broker across a restart of PostgreSQL (an embedded server of its own).

Jobs are rows: nothing stored is lost while the database is away. The service reconnects,
records the outcome of the job that ran through the outage, and claims what comes next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.postgres import EmbeddedServer
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[EmbeddedServer]:
    """An embedded PostgreSQL this module may stop and start (see test_faults.py)."""
    server = EmbeddedServer()
    try:
        yield server
    finally:
        server.remove()


def test_a_database_restart_loses_nothing_and_the_service_goes_on(
    own_postgres: EmbeddedServer,
    start_service: Callable[..., ServiceProcess],
    evidence: Evidence,
) -> None:
    dsn, queue = own_postgres.dsn, "restart_queue"
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema = migrated(conn, unique_schema())
        # A long lease: the job running through the outage stays this service's own.
        service = start_service(queue_config(dsn, schema, queue, lease=30))
        through = enqueue(
            conn, schema, queue, [job_message("sleep_then_record", evidence.path, 2, "through")]
        )
        evidence.wait_for(1)
    own_postgres.stop()
    evidence.wait_for(2)  # the job ended while the database was down
    own_postgres.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = enqueue(conn, schema, queue, [job_message("record", evidence.path, "after")])
        rows: list[dict[str, Any]] = wait_for_states(conn, schema, through + after, {"done"})
    assert [row["attempts"] for row in rows] == [1, 1]
    assert [record.get("label") or record.get("args") for record in evidence.records()] == [
        "through",
        "through",
        ["after"],
    ]
    assert "pg_queue connection to" in service.log  # it did notice the outage


def test_every_job_of_a_burst_runs_through_a_database_restart(
    own_postgres: EmbeddedServer,
    start_service: Callable[..., ServiceProcess],
    evidence: Evidence,
) -> None:
    dsn, queue, count = own_postgres.dsn, "burst_queue", 2000
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema = migrated(conn, unique_schema())
        messages = [job_message("record", evidence.path, n) for n in range(count)]
        uuids = enqueue(conn, schema, queue, messages)
    start_service(queue_config(dsn, schema, queue, lease=30))
    evidence.wait_for(200, timeout=30)  # mid-burst
    own_postgres.stop()
    own_postgres.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = wait_for_states(conn, schema, uuids, {"done"}, timeout=60)
    assert len(rows) == count
    ran = [record["args"][0] for record in evidence.records()]
    assert set(ran) == set(range(count))  # every job ran (at least once: durable)
    print(f"{count} jobs, {len(ran) - count} ran twice across the restart")
