"""The pg_queue statements read the rows they need, whatever the table's statistics say.

A VACUUM of a drained table leaves statistics that say it is empty (``reltuples`` 0) until
the next ANALYZE, and a generic plan made while the table was empty (the file truncated to
no page) is kept until its statistics change. Either way every estimate says "no row": a
claim planned so read the whole backlog, once for each row it took (seconds per claim).
Each statement is planned here as the broker's session plans it (its settings, a generic
plan prepared on its connection) and run against a backlog: no scan of ``jobs`` may read
more than a batch of rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from dispatcher.server.brokers.pg_queue.database import Connection, QueueDatabase
from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS
from dispatcher.server.brokers.pg_queue.sql import FINAL_STATES, Statements
from support.durable import migrated
from support.queue_rows import unique_schema

pytestmark = pytest.mark.timeout(120)

Conn = psycopg.Connection[Any]

BATCH = 50
BACKLOG = 5000


async def nothing(conn: Connection) -> None:
    """An ``on_open`` that checks nothing."""


@pytest.fixture
def db(pg_dsn: str) -> Iterator[QueueDatabase]:
    """A connection as the broker has one (its session settings, generic plans)."""
    database = QueueDatabase(pg_dsn, "pg-queue-plans", nothing)
    yield database
    anyio.run(database.close)


def insert_rows(
    conn: Conn, schema: str, prefix: str, state: str, count: int, **values: str
) -> None:
    """*count* rows of queue ``q`` in *state*; *values*: SQL expressions for other columns."""
    columns = {
        "uuid": f"'{prefix}' || g",
        "queue": "'q'",
        "task": "'t.work'",
        "message": "'{}'",
        "state": f"'{state}'",
        "max_attempts": "3",
        **values,
    }
    conn.execute(
        sql.SQL("INSERT INTO {}.jobs ({}) SELECT {} FROM generate_series(1, {}) AS g").format(
            sql.Identifier(schema),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ".join(columns.values())),
            count,
        )
    )


def fill(conn: Conn, schema: str) -> None:
    """A backlog: ready rows, running rows (some with their lease run out), old done rows."""
    running = {"attempts": "1", "claims": "1", "node_id": "'gone'", "started_at": "now()"}
    insert_rows(conn, schema, "ready-", "queued", BACKLOG)
    insert_rows(conn, schema, "held-", "running", 2 * BATCH, **running,
                lease_until="now() + interval '1 hour'")  # fmt: skip
    insert_rows(conn, schema, "lost-", "running", BACKLOG, **running,
                lease_until="now() - interval '1 hour'")  # fmt: skip
    insert_rows(conn, schema, "old-", "done", BACKLOG, attempts="1",
                finished_at="now() - interval '1 day'")  # fmt: skip


def held(conn: Conn, schema: str, order: str) -> list[tuple[int, str]]:
    """The ids and uuids of a batch of the rows running under a lease that has not run out."""
    query = (
        "SELECT id, uuid FROM {}.jobs WHERE uuid LIKE 'held-%%' AND state = 'running' ORDER BY id "
    )
    rows = conn.execute(
        sql.SQL(query + order + " LIMIT {}").format(sql.Identifier(schema), BATCH)
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def parameters(conn: Conn, schema: str) -> dict[str, dict[str, Any]]:
    """Each statement's parameters, for a batch of :data:`BATCH` rows."""
    claim = {
        "queues": ["q", "other"],
        "limit": BATCH,
        "node_id": "plans",
        "lease": 60,
        "max_bytes": 1 << 20,
        "max_total_bytes": 1 << 24,
        **NO_LIMITS,
    }
    renewed = held(conn, schema, "ASC")
    acks = [
        {"id": id, "attempts": 1, "claims": 1, "kind": "done", "outcome": None,
         "error": None, "result": "1", "delay": None, "uuid": uuid}
        for id, uuid in held(conn, schema, "DESC")
    ]  # fmt: skip
    return {
        "claim": claim,
        "claim_single": {**claim, "queues": ["q"]},
        "renew": {
            "ids": [id for id, _ in renewed],
            "uuids": [uuid for _, uuid in renewed],
            "attempts": [1] * BATCH,
            "claims": [1] * BATCH,
            "lease": 60,
        },
        "renew_waiting": {
            "ids": [id for id, _ in renewed],
            "uuids": [uuid for _, uuid in renewed],
            "attempts": [1] * BATCH,
            "claims": [1] * BATCH,
            "lease": 60,
            "lock_wait": "50ms",
        },
        "acknowledge": {"acks": json.dumps(acks), **NO_LIMITS},
        "sweep": {"limit": BATCH, **NO_LIMITS},
        "purge": {"queues": ["q"], "keep": 0, "limit": BATCH},
        "quarantine": {"queues": ["q", "other"], "limit": BATCH},
    }


def statements(schema: str) -> dict[str, bytes]:
    """The statements under test, by the name of their parameters."""
    made = Statements.for_schema(schema)
    return {
        "claim": made.claim,
        "claim_single": made.claim_single,
        "renew": made.renew,
        "renew_waiting": made.renew_waiting,
        "acknowledge": made.acknowledge,
        "sweep": made.sweep,
        "purge": made.purge[FINAL_STATES.index("done")],
        "quarantine": made.quarantine,
    }


def numbered(statement: bytes) -> tuple[bytes, list[str]]:
    """*statement* with ``$1``, ``$2``... for its named parameters, and their names in order."""
    names: list[str] = []

    def number(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode()
        if name not in names:
            names.append(name)
        return b"$%d" % (names.index(name) + 1)

    return re.sub(rb"%\((\w+)\)s", number, statement), names


def scans_of_jobs(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The nodes of an ``EXPLAIN (FORMAT JSON)`` plan that read the jobs table."""
    if plan.get("Relation Name") == "jobs" and plan["Node Type"] != "ModifyTable":
        yield plan
    for child in plan.get("Plans", []):
        yield from scans_of_jobs(child)


def rows_read(node: dict[str, Any]) -> float:
    """The rows an analyzed scan node read: those it returned and those it filtered out."""
    removed = sum(
        node.get(key, 0) for key in ("Rows Removed by Filter", "Rows Removed by Index Recheck")
    )
    return float(node["Actual Rows"] * node["Actual Loops"] + removed)


def changed(plan: dict[str, Any]) -> float:
    """The rows the top node of a plan returned."""
    return float(plan["Actual Rows"])


@pytest.mark.parametrize(
    "vacuum",
    [
        pytest.param("VACUUM {}", id="planned-while-empty"),
        pytest.param("VACUUM (TRUNCATE false) {}", id="statistics-say-empty"),
    ],
)
def test_each_statement_reads_about_a_batch_when_the_statistics_say_the_table_is_empty(
    pg_conn: Conn, db: QueueDatabase, vacuum: str
) -> None:
    schema = migrated(pg_conn, unique_schema())
    jobs = sql.Identifier(schema, "jobs")
    # A queue drained and purged, then vacuumed (autovacuum, or a nightly vacuumdb).
    insert_rows(pg_conn, schema, "gone-", "queued", BACKLOG)
    pg_conn.execute(sql.SQL("DELETE FROM {}").format(jobs))
    pg_conn.execute(sql.SQL(vacuum).format(jobs))
    reltuples, relpages = pg_conn.execute(
        "SELECT reltuples, relpages FROM pg_class WHERE oid = %s::regclass", (f"{schema}.jobs",)
    ).fetchone() or (None, None)
    assert reltuples == 0
    truncated = relpages == 0
    assert truncated == vacuum.startswith("VACUUM {")
    texts = statements(schema)

    async def explained(
        name: str, params: dict[str, dict[str, Any]], options: str
    ) -> dict[str, Any]:
        _, names = numbered(texts[name])
        values = sql.SQL(", ").join(sql.Literal(params[name][key]) for key in names)
        explain = sql.SQL("EXPLAIN ({}) EXECUTE {} ({})").format(
            sql.SQL(options), sql.Identifier(f"plans_{name}"), values
        )
        ((document,),) = await db.fetch(explain.as_bytes(pg_conn), {})
        plan = document if isinstance(document, list) else json.loads(document)
        return dict(plan[0]["Plan"])

    async def prepare() -> None:
        params = parameters(pg_conn, schema)
        for name, text in texts.items():
            query, _ = numbered(text)
            await db.fetch(b"PREPARE plans_" + name.encode() + b" AS " + query, {})
            await explained(name, params, "FORMAT JSON")  # planned now, kept

    if truncated:
        anyio.run(prepare)  # planned while the table is empty, as by an idle poll
    fill(pg_conn, schema)
    if not truncated:
        anyio.run(prepare)
    params = parameters(pg_conn, schema)
    for name in texts:
        plan = anyio.run(explained, name, params, "ANALYZE, FORMAT JSON")
        scans = list(scans_of_jobs(plan))
        assert scans, name
        assert all(rows_read(node) <= BATCH for node in scans), (name, scans)
        assert changed(plan) == BATCH, (name, plan)  # it did take, renew, settle... a batch
