"""The pg_queue broker's statements are never JIT-compiled.

PostgreSQL JIT-compiles a statement whose estimated cost passes ``jit_above_cost``, and
does it again at every run. A claim's estimate grows with the backlog (the ``LIMIT`` does
not bound it), so on a large queue each claim would spend tens of milliseconds compiling.
The tests lower ``jit_above_cost`` to 0 in the conninfo, as a large backlog does in effect.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dispatcher.server.brokers.pg_queue.database import Connection, QueueDatabase
from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS
from dispatcher.server.brokers.pg_queue.sql import Statements
from support.durable import enqueue, job_message, migrated
from support.queue_rows import unique_schema

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


async def nothing(conn: Connection) -> None:
    """An ``on_open`` that checks nothing."""


def claim_params(queue: str) -> dict[str, Any]:
    return {
        "queues": [queue],
        "limit": 10,
        "node_id": "jit-test",
        "lease": 30,
        "max_bytes": 1000,
        "max_total_bytes": 10_000,
        **NO_LIMITS,
    }


def jit_of_explained_claim(rows: list[tuple[Any, ...]]) -> Any:
    """The ``JIT`` section of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` result, or None."""
    (document,) = rows[0]
    plan = document if isinstance(document, list) else json.loads(document)
    return plan[0].get("JIT")


def test_a_claim_is_not_jit_compiled_on_the_brokers_connection(
    pg_conn: Conn, pg_dsn: str, schema: str
) -> None:
    enqueue(pg_conn, schema, "jit", [job_message("noop") for _ in range(20)])
    eager = make_conninfo(pg_dsn, options="-c jit_above_cost=0")
    explain = b"EXPLAIN (ANALYZE, FORMAT JSON) " + Statements.for_schema(schema).claim

    with psycopg.connect(eager, autocommit=True) as plain:
        if plain.execute("SELECT pg_jit_available()").fetchone() != (True,):
            pytest.skip("this PostgreSQL server cannot JIT-compile")
        compiled = jit_of_explained_claim(plain.execute(explain, claim_params("jit")).fetchall())
    assert compiled is not None  # without the broker's settings, this claim is compiled

    db = QueueDatabase(eager, "pg-queue-jit", nothing)
    try:
        rows = anyio.run(db.fetch, explain, claim_params("jit"))
    finally:
        anyio.run(db.close)
    assert jit_of_explained_claim(rows) is None


def test_jit_is_off_on_the_brokers_connection(pg_dsn: str) -> None:
    db = QueueDatabase(pg_dsn, "pg-queue-jit", nothing)
    try:
        setting = anyio.run(db.fetch, b"SELECT current_setting('jit')", {})
    finally:
        anyio.run(db.close)
    assert setting == [("off",)]


def test_jit_set_in_the_conninfo_wins(pg_dsn: str) -> None:
    db = QueueDatabase(make_conninfo(pg_dsn, options="-c jit=on"), "pg-queue-jit", nothing)
    try:
        setting = anyio.run(db.fetch, b"SELECT current_setting('jit')", {})
    finally:
        anyio.run(db.close)
    assert setting == [("on",)]
