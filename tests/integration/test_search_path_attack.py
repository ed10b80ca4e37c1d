"""Another role's functions in a schema of the role's ``search_path`` never run as that role.

The attack (CVE-2018-1058's pattern): a role that may create in a schema the victim's
``search_path`` lists (``public`` before PostgreSQL 15; a schema named like the victim's
role, ``"$user"``, first in the default path) adds a function or an operator with concrete
argument types, ``unnest(text[])``, that beats the polymorphic or variadic built-in the
victim's statement meant (``unnest(anyarray)``), even with ``pg_catalog`` searched first.
Each trap here records who called it. The service (through a pooler in transaction mode: no
session setting is made, its statements alone must hold), the SDK and dispatcherctl run as
such a role, every statement of theirs that could meet a trap is run, and none is called.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, submit_task
from support.ctl_here import dispatcherctl
from support.durable import own_schema, queue_config
from support.queue_rows import insert_job
from support.service import TASKS, Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]

TRAPS = """
CREATE TABLE {trap}.calls (fn text NOT NULL, who name NOT NULL DEFAULT current_user);
GRANT USAGE ON SCHEMA {trap} TO {role};
GRANT INSERT ON {trap}.calls TO {role};

CREATE FUNCTION {trap}.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('unnest(text[])');
RETURN QUERY SELECT pg_catalog.unnest(a); END$$;
CREATE FUNCTION {trap}.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('unnest(bigint[])');
RETURN QUERY SELECT pg_catalog.unnest(a); END$$;
CREATE FUNCTION {trap}.format(f text, a text, b timestamptz, c integer) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('format(text,text,timestamptz,integer)');
RETURN pg_catalog.format(f, a, b, c); END$$;
CREATE FUNCTION {trap}.format(f text, a integer, b integer) RETURNS text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('format(text,integer,integer)');
RETURN pg_catalog.format(f, a, b); END$$;
CREATE FUNCTION {trap}.json_build_array(
    a text, b text, c integer, d integer, e text, f double precision) RETURNS json
LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('json_build_array(...)');
RETURN pg_catalog.json_build_array(a, b, c, d, e, f); END$$;
CREATE FUNCTION {trap}.cardinality(a bigint[]) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('cardinality(bigint[])');
RETURN pg_catalog.cardinality(a); END$$;

CREATE FUNCTION {trap}.cat(a text, b integer) RETURNS text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('text || integer');
RETURN a OPERATOR(pg_catalog.||) b::text; END$$;
CREATE OPERATOR {trap}.|| (LEFTARG = text, RIGHTARG = integer, FUNCTION = {trap}.cat);
CREATE FUNCTION {trap}.modulo(a smallint, b bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {trap}.calls (fn) VALUES ('smallint % bigint');
RETURN a::bigint OPERATOR(pg_catalog.%) b; END$$;
CREATE OPERATOR {trap}.% (LEFTARG = smallint, RIGHTARG = bigint, FUNCTION = {trap}.modulo);
"""
"""The traps, in the schema named like the victim's role (first in its ``search_path``):
each beats a built-in that a statement of the packages called (or could call) unqualified,
records the call, then does what the built-in does."""


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """dispatcherctl, in this process (a child each took most of a test's time limit on a
    loaded machine)."""
    return dispatcherctl(config, *args)


@pytest.fixture
def victim(pg_conn: Conn, pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A login role with every right on a queue schema's tables, and a schema named like it
    (made by another role) holding the traps: ``(role, queue schema)``."""
    with own_schema(pg_dsn) as schema:
        role = f"v_{schema}"
        names = {"role": sql.Identifier(role), "trap": sql.Identifier(role)}
        for statement in ("CREATE ROLE {role} LOGIN", "CREATE SCHEMA {trap}", TRAPS):
            pg_conn.execute(sql.SQL(statement).format(**names))  # type: ignore[arg-type]
        tables = {"role": sql.Identifier(role), "schema": sql.Identifier(schema)}
        for grant in (
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT ON {schema}.migrations TO {role}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.jobs TO {role}",
            "GRANT SELECT, INSERT, DELETE ON {schema}.schedule_ticks TO {role}",
        ):
            pg_conn.execute(sql.SQL(grant).format(**tables))
        try:
            yield role, schema
        finally:
            pg_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(role)))
            pg_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def calls(conn: Conn, role: str) -> list[tuple[str, str]]:
    statement = sql.SQL("SELECT DISTINCT fn, who::text FROM {}.calls ORDER BY 1")
    return conn.execute(statement.format(sql.Identifier(role))).fetchall()


def test_the_traps_are_set(pg_conn: Conn, pg_dsn: str, victim: tuple[str, str]) -> None:
    """An unqualified call, or a polymorphic operator, from the role meets them."""
    role, _ = victim
    with psycopg.connect(make_conninfo(pg_dsn, user=role), autocommit=True) as conn:
        conn.execute("SELECT unnest(ARRAY['a']), format('%s %s', 1, 2), 'x' || 1")
    assert calls(pg_conn, role) == [
        ("format(text,integer,integer)", role),
        ("text || integer", role),
        ("unnest(text[])", role),
    ]


def test_the_service_the_sdk_and_dispatcherctl_never_call_another_roles_functions(
    start_service: Callable[..., ServiceProcess],
    pg_conn: Conn,
    pg_dsn: str,
    victim: tuple[str, str],
    channel: str,
    tmp_path: Path,
) -> None:
    role, schema = victim
    conninfo = make_conninfo(pg_dsn, user=role)
    evidence = Evidence(tmp_path / "evidence.jsonl")
    config = queue_config(
        conninfo, schema, channel, transaction_pooler=True, keep_finished=1, max_attempts=1
    )
    config_file = tmp_path / "dispatcher.yml"
    config_file.write_text(json.dumps(config))
    # A job whose service died: its lease ran out, a sweep takes it back.
    lost = insert_job(pg_conn, schema, queue=channel, task=TASKS + "noop", state="running")
    expired = sql.SQL(
        "UPDATE {}.jobs SET lease_until = now() - interval '1 minute' WHERE uuid = %s"
    )
    pg_conn.execute(expired.format(sql.Identifier(schema)), (lost,))
    # A job waiting to run again after a failure, for cancel-job; a failed one, for retry (of
    # a queue the service does not serve: it purges only its own).
    waiting = insert_job(
        pg_conn, schema, queue=channel, attempts=1, run_after=3600, last_error="boom"
    )
    failed = insert_job(pg_conn, schema, queue="elsewhere", state="failed", last_error="boom")
    service = start_service(config)
    setup({"version": 1, "brokers": {"pg_queue": {**config["brokers"]["pg_queue"]}}})
    try:
        ran = submit_task(TASKS + "record", args=[str(evidence.path), "ran"], queue=channel)
        failing = submit_task(TASKS + "fail", args=[str(evidence.path)], queue=channel)
    finally:
        close_connections()
        reset()
    evidence.wait_for(2)
    # The finished jobs, failed, done, swept and done, are purged by the service.
    gone = sql.SQL("SELECT count(*) FROM {}.jobs WHERE uuid = ANY(%s)")
    wait_until(
        lambda: (
            pg_conn.execute(
                gone.format(sql.Identifier(schema)), ([ran.uuid, failing.uuid, lost],)
            ).fetchone()
            == (0,)
        ),
        20,
    )
    for command in (
        ("migrate",),
        ("jobs",),
        ("cancel-job", "--uuid", waiting),
        ("retry", "--uuid", failed),
        ("purge", "--state", "cancelled", "--older-than", "0"),
    ):
        done = ctl(config_file, *command)
        assert done.returncode == 0, (command, done.stderr)
    assert service.stop() == 0
    assert calls(pg_conn, role) == []
