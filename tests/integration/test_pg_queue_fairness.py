"""Claims over many durable queues: what they lock, and how they share work among queues.

The claim statement runs on its own connection, as a service's does, in a transaction left
open while a second connection looks at what it holds; services run as subprocesses and
are judged by the order in which their jobs ran.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS
from dispatcher.server.brokers.pg_queue.sql import Statements
from support.durable import enqueue, job_message, migrated, queue_config
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess, task_message, wait_until

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def store(conn: Conn, schema: str, queue: str, count: int) -> None:
    """*count* ready jobs in *queue*, each newer than every job stored before."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {0}.jobs (uuid, queue, task, message, max_attempts, run_after)"
            " SELECT gen_random_uuid()::text, %(queue)s, 'noop', '{{}}', 3,"
            " '2000-01-01'::timestamptz + make_interval(secs => n + (SELECT count(*) FROM {0}.jobs))"
            " FROM generate_series(1, %(count)s) AS n"
        ).format(sql.Identifier(schema)),
        {"queue": queue, "count": count},
    )


def claim(conn: Conn, schema: str, queues: list[str], limit: int) -> list[tuple[Any, ...]]:
    """Run the services' claim in *conn*'s open transaction; return the rows it claimed."""
    statements = Statements.for_schema(schema)
    statement = statements.claim if len(queues) > 1 else statements.claim_single
    params = {
        "queues": queues,
        "limit": limit,
        "node_id": "fairness-test",
        "lease": 30,
        "max_bytes": 1000,
        "max_total_bytes": 1_000_000,
        **NO_LIMITS,
    }
    return [row for row in conn.execute(statement, params).fetchall() if row[0] is not None]


def free_rows(conn: Conn, schema: str) -> int:
    """The ready rows another service's claim could lock now."""
    query = sql.SQL(
        "SELECT count(*) FROM (SELECT id FROM {}.jobs WHERE state = 'queued'"
        " FOR UPDATE SKIP LOCKED) AS free"
    ).format(sql.Identifier(schema))
    with conn.transaction(force_rollback=True):
        (count,) = conn.execute(query).fetchone() or (0,)
    return int(count)


def test_a_claim_over_many_queues_locks_only_the_rows_it_takes(
    pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    # A claim locked `limit` rows in every queue it read, and kept them locked until it
    # committed: the other services' claims skipped them all.
    queues = [f"q{n}" for n in range(50)]
    for queue in queues:
        store(pg_conn, schema, queue, 20)
    with psycopg.connect(pg_dsn) as claimer:
        claimed = claim(claimer, schema, queues, 10)
        assert len(claimed) == 10
        assert free_rows(pg_conn, schema) == 50 * 20 - 10
        claimer.rollback()


def test_the_rows_no_service_can_read_are_looked_for_among_those_a_claim_reads(
    pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    # It read `limit` rows of every queue, serial jobs whose twin runs included (which the
    # claim skips): it missed the row that failed the claim behind them, and locked many.
    queues = [f"q{n}" for n in range(50)]
    for queue in queues:
        store(pg_conn, schema, queue, 20)
    jobs = sql.Identifier(schema)
    pg_conn.execute(
        sql.SQL(
            "UPDATE {}.jobs SET on_duplicate = 'serial', dup_key = 'twin' WHERE queue = 'q0'"
        ).format(jobs)
    )
    pg_conn.execute(
        sql.SQL(
            "INSERT INTO {}.jobs (uuid, queue, task, message, max_attempts, state, attempts,"
            " claims, node_id, lease_until, on_duplicate, dup_key) VALUES ('running-twin', 'q0',"
            " 'noop', '{{}}', 3, 'running', 1, 1, 'elsewhere', now() + interval '1 hour',"
            " 'serial', 'twin')"
        ).format(jobs)
    )
    store(pg_conn, schema, "q0", 1)  # newer than the serial ones
    statements = Statements.for_schema(schema)
    with psycopg.connect(pg_dsn) as claimer:
        read = claimer.execute(statements.quarantine, {"queues": queues, "limit": 10}).fetchall()
        assert len(read) == 10
        assert free_rows(pg_conn, schema) == 50 * 20 + 1 - 10
        claimer.rollback()
        claimed = {row[0] for row in claim(claimer, schema, queues, 10)}
        claimer.rollback()
        assert {row[0] for row in read} == claimed
        newest = sql.SQL("SELECT max(id) FROM {}.jobs WHERE queue = 'q0'").format(jobs)
        (row,) = pg_conn.execute(newest).fetchone() or (None,)
        assert row in claimed
        alone = claimer.execute(statements.quarantine, {"queues": ["q0"], "limit": 3}).fetchall()
        assert [found[0] for found in alone] == [row]
        claimer.rollback()


def test_a_claim_shares_its_rows_among_the_busy_queues_oldest_first_in_each(
    pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    for queue in ("a", "b", "c"):
        store(pg_conn, schema, queue, 30)
    oldest = sql.SQL("SELECT queue, id FROM {}.jobs ORDER BY run_after, id").format(
        sql.Identifier(schema)
    )
    order: dict[str, list[int]] = {}
    for queue, row in pg_conn.execute(oldest).fetchall():
        order.setdefault(queue, []).append(row)
    with psycopg.connect(pg_dsn) as claimer:
        for limit, shares in ((9, {"a": 3, "b": 3, "c": 3}), (4, {"a": 2, "b": 1, "c": 1})):
            rows = claim(claimer, schema, ["a", "b", "c"], limit)
            assert Counter(row[3] for row in rows) == shares
            for queue, share in shares.items():
                assert sorted(row[0] for row in rows if row[3] == queue) == order[queue][:share]
            claimer.rollback()
        # One busy queue, one with less than its share: the claim takes what the small one
        # has, and says that rows are left (so that the service claims again at once).
        rows = claim(claimer, schema, ["a", "d"], 10)
        assert Counter(row[3] for row in rows) == {"a": 10}
        claimer.rollback()
        store(pg_conn, schema, "d", 2)
        rows = claim(claimer, schema, ["a", "d"], 10)
        assert Counter(row[3] for row in rows) == {"a": 5, "d": 2}
        assert rows[0][6] >= 10
        claimer.rollback()


def test_a_claim_passes_over_the_queues_whose_rows_another_claim_holds(
    pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    queues = [f"q{n}" for n in range(6)]
    for queue in queues:
        store(pg_conn, schema, queue, 1)
    with psycopg.connect(pg_dsn) as first, psycopg.connect(pg_dsn) as second:
        taken = claim(first, schema, queues, 2)
        assert sorted(row[3] for row in taken) == ["q0", "q1"]
        assert sorted(row[3] for row in claim(second, schema, queues, 2)) == ["q2", "q3"]
        first.rollback()
        second.rollback()


def test_a_busy_queue_does_not_hold_up_the_other_queues_of_the_service(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, evidence: Evidence
) -> None:
    # All of queue A's backlog ran before queue B's first job: claims went by run_after
    # across queues. Both queues are filled before the service starts, A first; one
    # worker, no job claimed ahead: each claim takes one job.
    config = queue_config(pg_dsn, schema, "busy", prefetch=0)
    config["brokers"]["pg_queue"]["queues"] = ["busy", "small"]
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    enqueue(pg_conn, schema, "busy", [job_message("record", evidence.path, "A") for _ in range(30)])
    enqueue(pg_conn, schema, "small", [job_message("record", evidence.path, "B") for _ in range(5)])
    start_service(config)
    ran = [record["args"][0] for record in evidence.wait_for(35, timeout=60)]
    assert Counter(ran) == {"A": 30, "B": 5}
    # The queues take turns: B's five jobs run among the first eleven.
    assert [n for n, queue in enumerate(ran) if queue == "B"][-1] <= 10, ran


def test_a_durable_job_is_claimed_and_run_while_a_notify_backlog_waits(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    evidence: Evidence,
    channel: str,
    notify: Callable[[str, str], None],
    tmp_path: Path,
) -> None:
    # The durable job ran after the whole NOTIFY backlog: the broker's capacity counted the
    # backlog as waiting for its workers, so it claimed nothing while more jobs waited than
    # its prefetch (here none), and the queue was FIFO.
    flood = 40
    config = queue_config(pg_dsn, schema, f"{channel}_q", prefetch=0)
    config["brokers"]["pg_notify"] = {"conninfo": pg_dsn, "channels": [channel]}
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    start_service(config)
    gate = tmp_path / "gate"
    notify(channel, task_message("wait_for_file", evidence.path, str(gate), "blocker"))
    evidence.wait_for(1)  # the only worker is busy: what comes next waits
    for n in range(flood):
        notify(channel, task_message("sleep_then_record", evidence.path, 0.05, f"flood-{n}"))
    enqueue(pg_conn, schema, f"{channel}_q", [job_message("record", evidence.path, "durable")])
    gate.touch()

    def durable_ran() -> list[dict[str, Any]] | None:
        records = evidence.records()
        return records if any(r.get("args") == ["durable"] for r in records) else None

    records = wait_until(durable_ran, timeout=30)
    ran = [r.get("label") or r["args"][0] for r in records if r.get("event") != "end"]
    assert ran[0] == "blocker"
    started = ran.index("durable")
    assert started < flood, ran  # before the backlog drained
    assert ran[1:started] == [f"flood-{n}" for n in range(started - 1)]  # FIFO on its channel
