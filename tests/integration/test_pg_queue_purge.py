"""The services' purge of finished rows: each service purges the queues it serves, only.

Services of one schema may serve different queues with different ``keep_finished``: the
rows of a queue are kept as long as the services serving it say, whatever the others'
retention. The purge is driven here through the broker's :class:`Upkeep`, and run by a
real service.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import anyio
import psycopg
import pytest
from psycopg import sql

from dispatcher.server.brokers.pg_queue import upkeep as upkeep_module
from dispatcher.server.brokers.pg_queue.database import Connection, QueueDatabase
from dispatcher.server.brokers.pg_queue.sql import FINAL_STATES, Statements
from dispatcher.server.brokers.pg_queue.upkeep import Upkeep
from dispatcher.server.stats import ServiceStats
from support.durable import jobs, migrated, queue_config
from support.queue_rows import insert_job, unique_schema
from support.service import ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    """A schema of this test's own, with the queue's tables."""
    return migrated(pg_conn, unique_schema())


async def nothing(conn: Connection) -> None:
    """An ``on_open`` that checks nothing."""


@pytest.fixture
def db(pg_dsn: str) -> Iterator[QueueDatabase]:
    """A connection as the broker has one (generic plans, its timeouts)."""
    database = QueueDatabase(pg_dsn, "pg-queue-purge", nothing)
    yield database
    anyio.run(database.close)


def upkeep(db: QueueDatabase, schema: str, queues: list[str], keep_finished: float) -> Upkeep:
    """The upkeep of a service serving *queues* with *keep_finished* (only its purge is used)."""
    unused = cast(Any, None)
    return Upkeep(
        db,
        Statements.for_schema(schema),
        unused,
        unused,
        ServiceStats(),
        lease=30,
        keep_finished=keep_finished,
        queues=queues,
    )


def left(conn: Conn, schema: str) -> set[str]:
    return {row["uuid"] for row in jobs(conn, schema)}


def test_each_service_purges_its_own_queues_and_keeps_the_others_rows(
    pg_conn: Conn, schema: str, db: QueueDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches: each purge takes several, across queues and states.
    monkeypatch.setattr(upkeep_module, "BATCH", 2)

    def rows(queue: str, finished: float, count: int = 1) -> set[str]:
        return {
            insert_job(pg_conn, schema, queue=queue, state=state, finished=finished)
            for state in FINAL_STATES
            for _ in range(count)
        }

    # Service A serves "a" and "a2", keeping finished rows 100 s; B serves "b", 1000 s.
    a_old = rows("a", 500, count=3) | rows("a2", 500, count=2)
    a_young = rows("a", 50) | rows("a2", 50)
    b_kept = rows("b", 500)  # older than A keeps its own, younger than B keeps them
    b_old = rows("b", 5000, count=3)
    nobody = rows("c", 5000)  # a queue no service serves
    running = {insert_job(pg_conn, schema, queue="a", state="running", attempts=1)}
    service_a = upkeep(db, schema, ["a", "a2"], keep_finished=100)
    service_b = upkeep(db, schema, ["b"], keep_finished=1000)

    assert left(pg_conn, schema) == a_old | a_young | b_kept | b_old | nobody | running
    assert anyio.run(service_a.purge) is True
    assert left(pg_conn, schema) == a_young | b_kept | b_old | nobody | running
    assert anyio.run(service_b.purge) is True
    assert left(pg_conn, schema) == a_young | b_kept | nobody | running


def test_a_service_deletes_none_of_the_finished_rows_of_queues_it_does_not_serve(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str
) -> None:
    # Another service serves "elsewhere" and keeps its finished rows a week; "nobody" is
    # served by no service. This one keeps its own 2 s.
    others = {
        insert_job(pg_conn, schema, queue=queue, state=state, finished=60)
        for queue in ("elsewhere", "nobody")
        for state in FINAL_STATES
    }
    mine = {
        insert_job(pg_conn, schema, queue=channel, state=state, finished=60)
        for state in FINAL_STATES
    }
    start_service(queue_config(pg_dsn, schema, channel, keep_finished=2, lease=3))
    # Its purge took its own rows of every state; those of the others were due as well.
    wait_until(lambda: not left(pg_conn, schema) & mine, timeout=20)
    assert left(pg_conn, schema) == others


def scans_of_jobs(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The nodes of an ``EXPLAIN (FORMAT JSON)`` plan that read the jobs table."""
    if plan.get("Relation Name") == "jobs":
        yield plan
    for child in plan.get("Plans", []):
        yield from scans_of_jobs(child)


def rows_read(node: dict[str, Any]) -> float:
    """The rows an analyzed scan node read: those it returned and those it filtered out."""
    removed = sum(
        node.get(key, 0) for key in ("Rows Removed by Filter", "Rows Removed by Index Recheck")
    )
    return float(node["Actual Rows"] * node["Actual Loops"] + removed)


def test_a_purge_batch_reads_none_of_the_rows_other_queues_keep(
    pg_conn: Conn, schema: str, db: QueueDatabase
) -> None:
    # Many rows of another queue, all old enough for this service's retention but kept by
    # their own service: a batch must not walk past them to find this queue's few.
    jobs_table = sql.Identifier(schema, "jobs")
    pg_conn.execute(
        sql.SQL(
            "INSERT INTO {} (uuid, queue, task, message, state, attempts, max_attempts,"
            " finished_at) SELECT 'other-' || g, 'other', 't', '{{}}', 'done', 1, 3,"
            " now() - interval '1 day' - make_interval(secs => g)"
            " FROM generate_series(1, 20000) AS g"
        ).format(jobs_table)
    )
    mine = {insert_job(pg_conn, schema, queue="mine", state="done", finished=60) for _ in range(5)}
    pg_conn.execute(sql.SQL("ANALYZE {}").format(jobs_table))
    statements = Statements.for_schema(schema)
    done = statements.purge[FINAL_STATES.index("done")]

    async def explained() -> list[tuple[Any, ...]]:
        (mode,) = (await db.fetch(b"SELECT current_setting('plan_cache_mode')", {}))[0]
        assert mode == "force_generic_plan"
        explain = b"EXPLAIN (ANALYZE, FORMAT JSON) " + done
        return await db.fetch(explain, {"queues": ["mine"], "keep": 10, "limit": 1000})

    ((document,),) = anyio.run(explained)
    plan = (document if isinstance(document, list) else json.loads(document))[0]["Plan"]
    scans = list(scans_of_jobs(plan))
    assert scans
    # Each scan read this queue's five rows at most (found in order, then by id).
    assert all(rows_read(node) <= len(mine) for node in scans), scans
    assert not left(pg_conn, schema) & mine
    assert len(left(pg_conn, schema)) == 20000
