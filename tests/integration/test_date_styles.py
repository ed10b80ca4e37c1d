"""Jobs are read whatever the session's DateStyle, IntervalStyle and time zone.

A role or a database may set ``DateStyle`` to ``SQL, DMY``, ``German`` or ``Postgres, MDY``,
in which PostgreSQL writes a ``timestamptz`` in words psycopg cannot read. ``get_job()``,
``jobs()``, their async twins and ``dispatcherctl jobs`` read the same times whatever the
session's settings (as aware datetimes in its time zone, or as PostgreSQL writes, in the ISO
date style, those no datetime can hold), and leave a caller's connection as it was.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus

from dispatcher.config import reset, setup
from dispatcher.publish import (
    Job,
    aclose_connections,
    aget_job,
    ajobs,
    close_connections,
    get_job,
    jobs,
)
from dispatcher.publish.timestamps import EARLIEST, LATEST
from support.durable import migrated
from support.queue_rows import insert_job, unique_schema

Conn = psycopg.Connection[Any]

ZONE = "Asia/Kolkata"
"""A time zone with minutes in its offset, and seconds in its offset of old (LMT)."""

STYLES = ["SQL, DMY", "German", "Postgres, MDY", "ISO, DMY"]

PLAIN_CREATED = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
"""Day and month apart from each other (4 March, not 3 April), with microseconds."""

ODD = {
    "created_at": "4713-01-01 00:00:00+00 BC",
    "run_after": "infinity",
    "finished_at": "20000-01-01 12:00:00.5+00",
    "lease_until": "-infinity",
}
"""The times of the job ``u-odd``: none fits a datetime."""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """psycopg's async connections need asyncio."""
    return "asyncio"


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    """A migrated schema of this test's own, holding the jobs ``u-plain`` and ``u-odd``."""
    name = migrated(pg_conn, unique_schema())
    plain = insert_job(pg_conn, name, uuid="u-plain", state="running")
    odd = insert_job(pg_conn, name, uuid="u-odd", state="failed")
    table = sql.Identifier(name, "jobs")
    pg_conn.execute(
        sql.SQL("UPDATE {} SET created_at = %s WHERE uuid = %s").format(table),
        (PLAIN_CREATED, plain),
    )
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}::timestamptz").format(sql.Identifier(column), sql.Literal(value))
        for column, value in ODD.items()
    )
    pg_conn.execute(sql.SQL("UPDATE {} SET {} WHERE uuid = %s").format(table, assignments), (odd,))
    return name


def session_options(style: str) -> str:
    """libpq ``options`` setting the session's DateStyle, IntervalStyle and time zone."""
    return f"-c DateStyle={style.replace(' ', '')} -c IntervalStyle=sql_standard -c TimeZone={ZONE}"


def iso_texts(pg_dsn: str, schema: str) -> dict[str, dict[str, str | None]]:
    """Each job's times as PostgreSQL writes them in the ISO date style, in :data:`ZONE`."""
    with psycopg.connect(make_conninfo(pg_dsn, options="-c DateStyle=ISO")) as conn:
        conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(ZONE)))
        rows = conn.execute(
            sql.SQL(
                "SELECT uuid, created_at::text, run_after::text, started_at::text,"
                " finished_at::text, lease_until::text FROM {}"
            ).format(sql.Identifier(schema, "jobs"))
        ).fetchall()
    columns = ("created_at", "run_after", "started_at", "finished_at", "lease_until")
    return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in rows}


def check_jobs(plain: Job | None, odd: Job | None) -> None:
    """*plain* and *odd* hold the times their rows do, *plain*'s in the session's zone."""
    assert plain is not None
    assert odd is not None
    assert plain.created_at == PLAIN_CREATED
    assert plain.created_at.utcoffset() == timedelta(hours=5, minutes=30)
    assert plain.created_at.isoformat() == "2026-03-04T10:36:07.123456+05:30"
    assert plain.started_at is not None
    assert plain.lease_until is not None
    assert plain.lease_until - plain.started_at > timedelta(seconds=29)
    assert plain.finished_at is None
    now = datetime.now(UTC)
    assert abs(plain.run_after - now) < timedelta(minutes=5)
    assert (odd.created_at, odd.run_after) == (EARLIEST, LATEST)
    assert (odd.finished_at, odd.lease_until) == (LATEST, EARLIEST)


@pytest.fixture
def configure() -> Iterator[None]:
    """Forget the config (and close the SDK's connections) after the test."""
    yield
    close_connections()
    reset()


def setup_queue(pg_dsn: str, schema: str, options: str | None = None) -> None:
    """Configure the durable queue of *schema*, its sessions started with *options*."""
    conninfo = pg_dsn if options is None else make_conninfo(pg_dsn, options=options)
    queue = {"conninfo": conninfo, "queues": ["jobs"], "schema": schema}
    setup({"version": 1, "brokers": {"pg_queue": queue}})


@pytest.mark.parametrize("style", STYLES)
def test_the_sdk_reads_jobs_whatever_the_date_style_of_its_session(
    pg_dsn: str, schema: str, configure: None, style: str
) -> None:
    setup_queue(pg_dsn, schema, session_options(style))
    check_jobs(get_job("u-plain"), get_job("u-odd"))
    listed = {job.uuid: job for job in jobs()}
    check_jobs(listed.get("u-plain"), listed.get("u-odd"))


@pytest.mark.parametrize("style", STYLES)
def test_a_callers_connection_is_read_in_its_date_style_and_left_as_it_was(
    pg_dsn: str, schema: str, configure: None, style: str
) -> None:
    setup_queue(pg_dsn, schema)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("SET DateStyle = {}").format(sql.Literal(style)))
        conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(ZONE)))
        conn.execute("SET IntervalStyle = 'postgres_verbose'")
        loaders = conn.adapters.get_loader(psycopg.adapters.types["timestamptz"].oid, 0)
        check_jobs(get_job("u-plain", connection=conn), get_job("u-odd", connection=conn))
        listed = {job.uuid: job for job in jobs(connection=conn)}
        check_jobs(listed.get("u-plain"), listed.get("u-odd"))
        assert conn.info.transaction_status == TransactionStatus.INTRANS  # nothing ended it
        settings = conn.execute("SHOW DateStyle").fetchone(), conn.execute("SHOW TimeZone")
        assert settings[0] == (style if "," in style else f"{style}, DMY",)
        assert settings[1].fetchone() == (ZONE,)
        assert conn.execute("SHOW IntervalStyle").fetchone() == ("postgres_verbose",)
        assert conn.adapters.get_loader(psycopg.adapters.types["timestamptz"].oid, 0) is loaders


@pytest.mark.anyio
@pytest.mark.parametrize("style", ["SQL, DMY", "German"])
async def test_async_code_reads_jobs_whatever_the_date_style(
    pg_dsn: str, schema: str, configure: None, style: str
) -> None:
    setup_queue(pg_dsn, schema, session_options(style))
    check_jobs(await aget_job("u-plain"), await aget_job("u-odd"))
    async with await AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute(sql.SQL("SET DateStyle = {}").format(sql.Literal(style)))
        await conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(ZONE)))
        listed = {job.uuid: job for job in await ajobs(connection=conn)}
        check_jobs(listed.get("u-plain"), listed.get("u-odd"))
        cursor = await conn.execute("SHOW DateStyle")
        assert (await cursor.fetchone()) == (style if "," in style else f"{style}, DMY",)
    await aclose_connections()


@pytest.mark.parametrize("style", STYLES)
def test_dispatcherctl_jobs_lists_jobs_whatever_the_date_style(
    tmp_path: Path, pg_dsn: str, schema: str, style: str
) -> None:
    conninfo = make_conninfo(pg_dsn, options=session_options(style))
    config = tmp_path / "dispatcher.yml"
    queue = {"conninfo": conninfo, "queues": ["jobs"], "schema": schema}
    config.write_text(json.dumps({"version": 1, "brokers": {"pg_queue": queue}}))
    command = [sys.executable, "-m", "dispatcher.server.ctl", "jobs", "--config", str(config)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (table.returncode, table.stderr) == (0, "")
    texts = iso_texts(pg_dsn, schema)["u-odd"]
    whens = {line.split()[0]: line.split()[5:] for line in table.stdout.splitlines()[1:]}
    assert whens["u-plain"][0] == "running"
    # Seconds (or minutes) ago: its started_at was read as the right date.
    assert re.fullmatch(r"([0-9]+m)?[0-9]+s", whens["u-plain"][1])
    assert whens["u-odd"] == ["finished", *str(texts["finished_at"]).split()]
    listed = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert (listed.returncode, listed.stderr) == (0, "")
    rows = {row["uuid"]: row for row in json.loads(listed.stdout)}
    assert rows["u-plain"]["created_at"] == "2026-03-04T10:36:07.123456+05:30"
    assert {column: rows["u-odd"][column] for column in ODD} == {c: texts[c] for c in ODD}
    assert rows["u-odd"]["created_at"].endswith(" BC")
