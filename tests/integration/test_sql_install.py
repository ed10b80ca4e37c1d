"""Installing the SQL functions: never into a schema any role may create in, all or nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.schema import sql_publisher, sql_queue_publisher
from support.queue_rows import unique_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

ALL_FUNCTIONS = {
    "dispatcher_submit",
    "dispatcher_enqueue",
    "dispatcher_duplicate_key",
    "dispatcher_identity_json",
    "dispatcher_unreadable_path",
    "dispatcher_unreadable_number",
}


@pytest.fixture
def open_schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own in which PUBLIC has CREATE (as public on PostgreSQL 14)."""
    name = unique_schema()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(name))
        )
        try:
            yield name
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def installed(pg_dsn: str, schema: str) -> dict[str, list[str] | None]:
    """The functions in *schema*, with their settings (proconfig)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = %s::regnamespace",
            (schema,),
        ).fetchall()
    return {name: config for name, config in rows}


def refusal(schema: str, file: str) -> str:
    return (
        f"{file}: refusing to install into schema {schema}: PUBLIC has CREATE on it, so any"
        f" role could create operators the functions would call; run REVOKE CREATE ON SCHEMA"
        f" {schema} FROM PUBLIC, or install into a schema only trusted roles can CREATE in"
    )


def test_install_sql_refuses_a_schema_public_may_create_in_and_installs_once_revoked(
    pg_dsn: str, open_schema: str, tmp_path: Path
) -> None:
    conninfo = make_conninfo(pg_dsn, options=f"-csearch_path={open_schema}")
    config = tmp_path / "dispatcher.json"
    config.write_text(
        json.dumps(
            {"version": 1, "brokers": {"pg_notify": {"conninfo": conninfo, "channels": ["c"]}}}
        )
    )
    command = [
        sys.executable,
        "-m",
        "dispatcher.server.ctl",
        "install-sql",
        "--config",
        str(config),
    ]

    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("dispatcherctl: cannot install dispatcher_submit() in PostgreSQL at ")
    assert refusal(open_schema, "dispatcher_submit.sql") in line
    assert installed(pg_dsn, open_schema) == {}

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(open_schema))
        )
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, done.stderr
    # Each line says where: the first schema of the search_path, which callers must name.
    lines = done.stdout.splitlines()
    assert [line.split(" of PostgreSQL at ")[0] for line in lines] == [
        f'installed {function}() in schema "{open_schema}"'
        for function in ("dispatcher_submit", "dispatcher_enqueue")
    ]
    functions = installed(pg_dsn, open_schema)
    assert set(functions) == ALL_FUNCTIONS
    assert f"search_path=pg_catalog, {open_schema}, pg_temp" in str(functions["dispatcher_submit"])


@pytest.mark.parametrize("flags", [["-1", "-v", "ON_ERROR_STOP=1"], []], ids=["as said", "bare"])
@pytest.mark.parametrize("file", ["dispatcher_submit.sql", "dispatcher_enqueue.sql"])
def test_psql_creates_nothing_in_a_schema_public_may_create_in(
    pg_dsn: str, open_schema: str, file: str, flags: list[str]
) -> None:
    """The refusal comes first: psql run as the file's header says (one transaction,
    stopping at the first error) creates nothing; nor does a bare `psql -f`, which goes on
    after the refusal (not functions any role could plant operators for)."""
    result = subprocess.run(
        [
            "psql",
            make_conninfo(pg_dsn, options=f"-csearch_path={open_schema}"),
            *flags,
            "-f",
            SCHEMAS / file,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refusal(open_schema, file) in result.stderr
    assert installed(pg_dsn, open_schema) == {}


def test_only_the_functions_meant_to_be_called_set_their_search_path(
    pg_dsn: str, open_schema: str
) -> None:
    """A function's settings are applied at every call: a helper's, at every JSON node of
    its recursion. The helpers run under the path of the function that calls them."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(open_schema))
        )
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(open_schema)))
        conn.execute(sql_publisher().encode())
        conn.execute(sql_queue_publisher().encode())
    path = f"search_path=pg_catalog, {open_schema}, pg_temp"
    assert installed(pg_dsn, open_schema) == {
        "dispatcher_submit": [path],
        "dispatcher_enqueue": [path],
        "dispatcher_duplicate_key": ["extra_float_digits=1", path],
        "dispatcher_identity_json": None,
        "dispatcher_unreadable_path": None,
        "dispatcher_unreadable_number": None,
    }


@pytest.mark.parametrize("file", ["dispatcher_submit.sql", "dispatcher_enqueue.sql"])
def test_the_file_runs_inside_a_transaction_of_the_caller(pg_dsn: str, file: str) -> None:
    """As a framework's migration runs it (Django's RunSQL, Alembic): in the caller's
    transaction, which it neither commits early nor breaks, so that a rollback undoes it."""
    schema = unique_schema()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            with psycopg.connect(pg_dsn) as conn:
                conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(schema)))
                conn.execute((SCHEMAS / file).read_text(encoding="utf-8").encode())
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                assert installed_in(conn, schema)  # seen inside the transaction
                conn.rollback()
            assert installed(pg_dsn, schema) == {}
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def installed_in(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The functions in *schema*, as *conn* sees them."""
    rows = conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace", (schema,)
    ).fetchall()
    return [name for (name,) in rows]
