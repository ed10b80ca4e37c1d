"""Renewing leases while other services' statements hold rows locked.

Two services on one database: a claim (or a sweep) of one that meets a row of the other
just as it changes (claimed, renewed) locks it, although it leaves it alone: PostgreSQL
locks the row's latest version before it checks the statement's conditions on it again,
and keeps the lock until the statement ends. Here the statement's transaction is kept open
(or paused at a chosen row) on one connection while the other service renews its leases on
another, as the broker does (``Leases`` on a ``QueueDatabase``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from dispatcher.server.brokers.pg_queue.database import Connection, QueueDatabase
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.limits import NO_LIMITS
from dispatcher.server.brokers.pg_queue.sql import FINAL_STATES, Statements
from support.durable import migrated
from support.queue_rows import insert_job, unique_schema

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]
LEASE = 30.0
PAUSE = 424242
"""The advisory lock a paused statement waits for (see :func:`paused`)."""


async def nothing(conn: Connection) -> None:
    """An ``on_open`` that checks nothing."""


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


@pytest.fixture
def other(pg_dsn: str) -> Iterator[Conn]:
    """The connection of the other service's statement (a transaction, left open)."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET enable_seqscan = off")  # as the services' sessions
        conn.commit()  # (its statements' now() is when each transaction begins)
        yield conn


def claim_params(limit: int, node_id: str) -> dict[str, Any]:
    return {
        "queues": ["q"],
        "limit": limit,
        "node_id": node_id,
        "lease": LEASE,
        "max_bytes": 1 << 20,
        "max_total_bytes": 1 << 24,
        **NO_LIMITS,
    }


class Service:
    """A service's working connection and the leases it holds (what the broker has)."""

    def __init__(self, dsn: str, schema: str, lock_wait: float | None = None) -> None:
        self.statements = Statements.for_schema(schema)
        self.db = QueueDatabase(dsn, "pg-queue-lease-locks", nothing)
        extra = {} if lock_wait is None else {"lock_wait": lock_wait}
        self.leases = Leases(
            self.db, self.statements.renew, LEASE, self.statements.renew_waiting, **extra
        )

    async def claim(self, limit: int, claimed_ago: float = 0.0) -> list[tuple[int, int, str]]:
        """Claim *limit* ready rows and hold them, as claimed *claimed_ago* seconds ago."""
        sent = time.monotonic() - claimed_ago
        rows = await self.db.fetch(self.statements.claim_single, claim_params(limit, "b"))
        rows = [row for row in rows if row[0] is not None]
        for row in rows:
            self.leases.add(row[0], row[1], row[2], sent, row[7])
        assert len(rows) == limit
        return [(row[0], row[2], row[7]) for row in rows]

    async def pid(self) -> int:
        ((pid,),) = await self.db.fetch(b"SELECT pg_catalog.pg_backend_pid()", {})
        return int(pid)


def lease_until(conn: Conn, schema: str, row: int) -> Any:
    query = sql.SQL("SELECT lease_until FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "jobs")
    )
    ((until,),) = conn.execute(query, (row,)).fetchall()
    return until


def skipped_by_renewal(conn: Conn, service: Service, rows: list[tuple[int, int, str]]) -> list[int]:
    """The rows among *rows* that the renewal statement finds locked (ours, not renewed)."""
    ids = [row for row, _, _ in rows]
    params = {
        "ids": ids,
        "attempts": [1] * len(rows),
        "claims": [claim for _, claim, _ in rows],
        "uuids": [uuid for _, _, uuid in rows],
        "lease": LEASE,
    }
    answer = conn.execute(service.statements.renew, params).fetchall()
    assert sorted(row for row, _ in answer) == sorted(ids)  # all still ours
    return [row for row, renewed in answer if not renewed]


def candidates(statements: Statements) -> str:
    """The locking read of the claim of one queue (its ``candidates``), as it is in the claim."""
    text = statements.claim_single.decode()
    found = re.search(r"candidates AS MATERIALIZED \((.*?FOR UPDATE SKIP LOCKED)\n\)", text, re.S)
    assert found is not None
    return found.group(1).replace("(%(queues)s::text[])[1]", "'q'").replace("%(limit)s", "10")


def race_a_claim(pg_conn: Conn, other: Conn, schema: str, service: Service) -> tuple[int, int, str]:
    """The other service's claim meets a row as this service claims it; return that row.

    The claim's locking read is run as a cursor, so that the row is claimed between two of
    its rows (the race between two claims of the same queue's head, taken apart).
    """
    for _ in range(3):
        insert_job(pg_conn, schema, queue="q")
    other.execute("DECLARE head NO SCROLL CURSOR FOR " + candidates(service.statements))
    assert len(other.execute("FETCH 1 FROM head").fetchall()) == 1  # its snapshot is taken
    [row] = anyio.run(service.claim, 1)  # the next ready row: the other's claim skipped it
    rest = other.execute("FETCH ALL FROM head").fetchall()
    assert [found[0] for found in rest] == [row[0] + 1]  # passed over ours (locked it)
    return row


def paused(conn: Conn, schema: str) -> None:
    """Make *conn*'s updates of job rows wait for :data:`PAUSE` (the others' do not)."""
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {}.pause() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF current_setting('test.pause', true) = 'on' THEN"
            " PERFORM pg_advisory_xact_lock_shared({}); END IF; RETURN NEW; END $$"
        ).format(sql.Identifier(schema), PAUSE)
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER pause BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(sql.Identifier(schema, "jobs"), sql.Identifier(schema, "pause"))
    )


def wait_until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def race_a_sweep(pg_conn: Conn, other: Conn, schema: str, service: Service) -> tuple[int, int, str]:
    """The other service's sweep meets a row as this service renews it; return that row.

    This service was late (its lease ran out a moment ago); the sweep, paused at the row
    before it (a dead service's), reads it as expired, and finds it renewed.
    """
    insert_job(pg_conn, schema, queue="q", state="running", attempts=1, uuid="dead")
    jobs = sql.Identifier(schema, "jobs")
    pg_conn.execute(
        sql.SQL("UPDATE {} SET lease_until = now() - interval '1 hour' WHERE uuid = 'dead'").format(
            jobs
        )
    )
    insert_job(pg_conn, schema, queue="q")
    [row] = anyio.run(service.claim, 1)
    pg_conn.execute(
        sql.SQL("UPDATE {} SET lease_until = now() - interval '1 second' WHERE id = %s").format(
            jobs
        ),
        (row[0],),
    )
    paused(pg_conn, schema)
    pg_conn.execute("SELECT pg_advisory_lock(%s)", (PAUSE,))
    pid = other.info.backend_pid
    other.execute("SET test.pause = 'on'")
    swept: list[Any] = []

    def sweep() -> None:
        swept.extend(other.execute(service.statements.sweep, {"limit": 10, **NO_LIMITS}))

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        query = "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted"
        wait_until(lambda: (pg_conn.execute(query, (pid,)).fetchone() or (0,))[0], "no pause")
        anyio.run(service.leases.renew)  # in time: nothing holds the row yet
        valid = sql.SQL("SELECT lease_until > now() FROM {} WHERE id = %s").format(jobs)
        assert pg_conn.execute(valid, (row[0],)).fetchall() == [(True,)]
    finally:
        pg_conn.execute("SELECT pg_advisory_unlock(%s)", (PAUSE,))
        thread.join(10)
    assert [state for _, state, _ in swept] == ["queued"]  # the dead service's row, not ours
    return row


RACES = {"claim": race_a_claim, "sweep": race_a_sweep}


@pytest.mark.parametrize("race", sorted(RACES))
def test_a_lease_is_renewed_when_another_services_statement_releases_its_row(
    pg_dsn: str,
    pg_conn: Conn,
    other: Conn,
    schema: str,
    race: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Service(pg_dsn, schema, lock_wait=LEASE)  # long: the test ends the lock itself
    row = RACES[race](pg_conn, other, schema, service)
    # The other service's statement holds the row, under a lease that has not run out: the
    # renewal's first statement finds it locked.
    assert skipped_by_renewal(pg_conn, service, [row]) == [row[0]]
    before = lease_until(pg_conn, schema, row[0])

    async def renew_meanwhile() -> None:
        pid = await service.pid()
        done = anyio.Event()

        async def renew() -> None:
            await service.leases.renew()
            done.set()

        blocked = "SELECT %s = ANY(pg_blocking_pids(%s))"
        async with anyio.create_task_group() as group:
            group.start_soon(renew)
            with anyio.fail_after(10):
                while not done.is_set():
                    if (pg_conn.execute(blocked, (other.info.backend_pid, pid)).fetchone() or [0])[
                        0
                    ]:
                        break
                    await anyio.sleep(0.005)
            assert not done.is_set(), "the renewal gave up on the row without waiting for it"
            other.rollback()  # the other service's statement ends

    with caplog.at_level(logging.DEBUG, logger="dispatcher.pg_queue"):
        try:
            anyio.run(renew_meanwhile)
        finally:
            anyio.run(service.db.close)
    assert lease_until(pg_conn, schema, row[0]) > before
    assert "not renewed" not in caplog.text


def test_a_lease_whose_row_stays_locked_is_said_once_then_warned_of_when_at_risk(
    pg_dsn: str, pg_conn: Conn, other: Conn, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(pg_dsn, schema)
    for _ in range(3):
        insert_job(pg_conn, schema, queue="q")

    def said() -> list[tuple[str, str]]:
        lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
        caplog.clear()
        return lines

    async def scenario() -> None:
        free, locked = await service.claim(2)
        [late] = await service.claim(1, claimed_ago=0.6 * LEASE)  # renewed last 18 s ago
        query = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s) FOR UPDATE").format(
            sql.Identifier(schema, "jobs")
        )
        other.execute(query, ([locked[0], late[0]],))  # an operator's transaction, say
        before = {row: lease_until(pg_conn, schema, row) for row, _, _ in (free, locked, late)}
        started = time.monotonic()
        await service.leases.renew()
        assert time.monotonic() - started < 5  # (it waits a moment only)
        after = {row: lease_until(pg_conn, schema, row) for row, _, _ in (free, locked, late)}
        assert [after[row] > before[row] for row, _, _ in (free, locked, late)] == [
            True,
            False,
            False,
        ]
        lines = said()
        assert sorted(level for level, _ in lines) == ["INFO", "WARNING"], lines
        # Not renewed once, tried again in a renewal's time: no warning.
        [info] = [text for level, text in lines if level == "INFO"]
        assert re.fullmatch(
            r"1 lease not renewed this round: their rows stayed locked by another transaction "
            r"for over 50ms \(a claim or a sweep of a service of this queue .*\); tried again "
            rf"at the next renewal, 2\d\.\d s before the leases run out: job {locked[0]} "
            rf"\(uuid {locked[2]}\)",
            info,
        ), info
        # Not renewed for more than half of its lease: warned of.
        [warning] = [text for level, text in lines if level == "WARNING"]
        assert re.fullmatch(
            r"1 lease at risk of running out: not renewed for 1\d\.\d s, their rows found locked "
            r"by another transaction at each renewal since \(.*such as SELECT \.\.\. FOR "
            r"UPDATE\); they run out in 1\d\.\d s: the jobs go on, .*: "
            rf"job {late[0]} \(uuid {late[2]}\)",
            warning,
        ), warning
        await service.leases.renew()
        assert said() == []  # each said once
        other.rollback()
        await service.leases.renew()
        assert said() == [
            ("INFO", f"the lease of job {late[0]} is renewed again: the lock is gone")
        ]
        assert not skipped_by_renewal(pg_conn, service, [free, locked, late])

    with caplog.at_level(logging.DEBUG, logger="dispatcher.pg_queue"):
        try:
            anyio.run(scenario)
        finally:
            anyio.run(service.db.close)


def test_no_statement_locks_a_row_of_another_service_that_it_leaves_alone(
    pg_dsn: str, pg_conn: Conn, other: Conn, schema: str
) -> None:
    """Without a race, no statement of a service locks the rows it will not change: those
    the others hold under a lease, or their finished rows it will not purge."""
    service = Service(pg_dsn, schema)
    for _ in range(4):
        insert_job(pg_conn, schema, queue="q", on_duplicate="serial")
    held = anyio.run(service.claim, 1)  # serial: an identical row waits behind it
    for state in FINAL_STATES:
        insert_job(pg_conn, schema, queue="q", state=state, age=3600)
    insert_job(pg_conn, schema, queue="q", state="running", attempts=1, uuid="expired")
    pg_conn.execute(
        sql.SQL(
            "UPDATE {} SET lease_until = now() - interval '1 hour' WHERE uuid = 'expired'"
        ).format(sql.Identifier(schema, "jobs"))
    )
    made = Statements.for_schema(schema)
    ack = json.dumps(  # the late outcome of an earlier claim
        [{"id": held[0][0], "attempts": 1, "claims": held[0][1] - 1, "kind": "done",
          "outcome": "ok", "error": None, "result": None, "delay": None, "uuid": held[0][2]}]
    )  # fmt: skip
    renew = {"ids": [held[0][0]], "attempts": [1], "claims": [held[0][1] - 1],
             "uuids": [held[0][2]], "lease": LEASE}  # fmt: skip
    runs: dict[str, tuple[bytes, dict[str, Any]]] = {
        "claim": (made.claim, {**claim_params(10, "a"), "queues": ["q", "other"]}),
        "claim_single": (made.claim_single, claim_params(10, "a")),
        "sweep": (made.sweep, {"limit": 10, **NO_LIMITS}),
        "quarantine": (made.quarantine, {"queues": ["q"], "limit": 10}),
        "acknowledge": (made.acknowledge, {"acks": ack, **NO_LIMITS}),
        "renew": (made.renew, renew),
        "renew_waiting": (made.renew_waiting, {**renew, "lock_wait": "10ms"}),
        **{
            f"purge_{state}": (statement, {"queues": ["q"], "keep": 0, "limit": 10})
            for state, statement in zip(FINAL_STATES, made.purge, strict=True)
        },
    }
    for name, (statement, params) in runs.items():
        other.execute(statement, params)
        assert not skipped_by_renewal(pg_conn, service, held), name
        other.rollback()
    anyio.run(service.db.close)
