"""``dispatcherctl migrate``: create or upgrade the tables of the durable pg_queue broker."""

from __future__ import annotations

import sys
from typing import Any, Final

import psycopg

from dispatcher.config import Settings
from dispatcher.publish import broker_unavailable, describe_server
from dispatcher.publish.broker_errors import stopped_answering
from dispatcher.publish.connection_settings import connection_options
from dispatcher.publish.refusals import note_server, refused_for_good
from dispatcher.server.brokers.pg_queue.migrations import (
    VERSION_TABLE,
    MigrationError,
    VersionUnreadable,
    bound_lock_waits,
    migrate,
    plan,
    quoted,
    version_to_migrate,
)
from dispatcher.server.log_text import escape

_HOLDERS: Final = """
SELECT a.pid, coalesce(nullif(a.application_name, ''), '-'), coalesce(a.state, 'state unknown'),
       coalesce(extract(epoch FROM pg_catalog.now() - a.xact_start)::int::text, '?')
FROM pg_catalog.pg_stat_activity AS a
WHERE a.pid <> pg_catalog.pg_backend_pid() AND a.pid IN (
    SELECT l.pid FROM pg_catalog.pg_locks AS l
    WHERE l.granted
      AND l.relation IN (
        SELECT pg_catalog.to_regclass(t)::oid FROM pg_catalog.unnest(%s::text[]) AS t)
      AND l.database = (
        SELECT d.oid FROM pg_catalog.pg_database AS d
        WHERE d.datname = pg_catalog.current_database()))
ORDER BY a.xact_start LIMIT 3
"""
"""Up to three sessions holding a lock on one of the tables, oldest transaction first."""

_RIGHTS: Final = """
SELECT current_user, pg_catalog.current_database(), n.oid IS NOT NULL,
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
       n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(n.oid, 'USAGE'),
       n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(n.oid, 'CREATE'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c
               WHERE c.relnamespace = n.oid AND c.relname = 'jobs'),
       ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class AS c
             WHERE c.relnamespace = n.oid AND c.relname IN ('jobs', 'migrations', 'schedule_ticks')
               AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')
             ORDER BY c.relname)
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = %s
"""
"""What creating or upgrading the tables needs, as the role has it: its name, the database's,
whether the schema exists, the role's CREATE on the database, USAGE and CREATE on the
schema, whether the jobs table exists, and the queue's tables it does not own (a migration
may alter them)."""

EXIT_OK: Final = 0
EXIT_UNREACHABLE: Final = 1
EXIT_USAGE: Final = 2


def migrate_command(settings: Settings, print_only: bool = False, lock_wait: float = 5.0) -> int:
    """Bring the pg_queue tables to this version (or, with *print_only*, print the SQL).

    It (and the SQL printed) waits at most *lock_wait* seconds for a lock on the tables
    (another session's transaction): every statement on the table waits behind it
    meanwhile. Another ``migrate`` running is waited for, however long it takes.

    Returns the exit status: 0 when done (or nothing to do), 1 when the database cannot be
    reached or a lock was not had in time (nothing changed), 2 when the config has no
    ``brokers.pg_queue``, the tables are newer than this version, or the database refused
    (a privilege the role lacks is named, with the statement that grants it). Tables at the
    latest version need no privilege but reading their version.
    """
    section = settings.brokers.pg_queue
    if section is None:
        print(f"dispatcherctl: {settings.source} has no brokers.pg_queue", file=sys.stderr)
        return EXIT_USAGE
    schema, conninfo = section.schema, section.conninfo
    conn: psycopg.Connection[Any] | None = None
    try:
        with psycopg.connect(
            conninfo, autocommit=True, connect_timeout=10, **connection_options(conninfo)
        ) as conn:
            if print_only:
                try:
                    with conn.transaction():
                        bound_lock_waits(conn, lock_wait)
                        work = plan(schema, version_to_migrate(conn, schema))
                except psycopg.errors.LockNotAvailable:
                    print(f"dispatcherctl: {_locked(conn, schema, lock_wait)}", file=sys.stderr)
                    return EXIT_UNREACHABLE
                except VersionUnreadable as exc:
                    print(f"dispatcherctl: {_unreadable(conn, schema, exc)}", file=sys.stderr)
                    return EXIT_USAGE
                print(work.script(lock_wait), end="")
                return EXIT_OK
            try:
                done = migrate(conn, schema, lock_wait)
            except psycopg.errors.LockNotAvailable:
                print(f"dispatcherctl: {_locked(conn, schema, lock_wait)}", file=sys.stderr)
                return EXIT_UNREACHABLE
            except VersionUnreadable as exc:
                print(f"dispatcherctl: {_unreadable(conn, schema, exc)}", file=sys.stderr)
                return EXIT_USAGE
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                note_server(exc, conn, conninfo)  # (a standby, or a read-only role: which)
                raise
            except psycopg.errors.InsufficientPrivilege:
                lacking = _lacking(conn, schema)
                if lacking is None:
                    raise
                print(f"dispatcherctl: {lacking}", file=sys.stderr)
                return EXIT_USAGE
    except MigrationError as exc:
        print(f"dispatcherctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except psycopg.Error as exc:
        doing = "migrate the pg_queue tables in"
        if conn is not None and conn.broken:  # lost under a statement, not refused
            then = (
                "the migration is one transaction: nothing was changed, unless it was lost as "
                "it committed; migrate again (it says which)"
            )
            failure = stopped_answering(conninfo, exc, doing, "the migration", then)
        else:
            failure = broker_unavailable(conninfo, exc, doing)
        print(f"dispatcherctl: {failure}", file=sys.stderr)
        return EXIT_USAGE if refused_for_good(exc) else EXIT_UNREACHABLE
    where = f'the pg_queue tables in schema "{schema}" of {describe_server(conninfo)}'
    if done.pending:
        print(f"migrated {where} from version {done.current} to {done.latest}")
    else:
        print(f"{where} are at version {done.current}: nothing to do")
    return EXIT_OK


def _lacking(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """Which privilege the role lacks to create or upgrade the tables, and how to mend it.

    ``None`` when none of those it reads is lacking (or they cannot be read).
    """
    try:
        row = conn.execute(_RIGHTS, (schema,)).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    user, database, has_schema, create_database, usage, create, has_jobs, not_owned = row
    role, name = quoted(user), quoted(schema)
    if not has_schema:
        if create_database:
            return None
        base = quoted(database)
        return (
            f'cannot create the pg_queue tables in schema "{schema}": the role {role} lacks '
            f"CREATE on database {base} (creating schema {name}): GRANT CREATE ON DATABASE "
            f"{base} TO {role}, or have the schema made for it: CREATE SCHEMA {name} "
            f"AUTHORIZATION {role}"
        )
    doing = "upgrade" if has_jobs else "create"
    if not (usage and create):
        if not usage:
            doing = "migrate"
        lacks = ", ".join(p for p, has in (("USAGE", usage), ("CREATE", create)) if not has)
        return (
            f'cannot {doing} the pg_queue tables in schema "{schema}": the role {role} lacks '
            f"{lacks} on schema {name}: GRANT {lacks} ON SCHEMA {name} TO {role} (or run "
            "dispatcherctl migrate as the schema's owner)"
        )
    if not_owned:
        tables = ", ".join(f"{name}.{table}" for table in not_owned)
        return (
            f'cannot {doing} the pg_queue tables in schema "{schema}": the role {role} does '
            f"not own {tables}, which a migration alters: run dispatcherctl migrate as their "
            "owner"
        )
    return None


_READING: Final = """
SELECT current_user, n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(n.oid, 'USAGE'),
       c.oid IS NULL OR pg_catalog.has_table_privilege(c.oid, 'SELECT')
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = %s
LEFT JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = 'migrations'
"""
"""The role's name, whether it has USAGE on the schema and SELECT on its version table."""


def _unreadable(conn: psycopg.Connection[Any], schema: str, exc: VersionUnreadable) -> str:
    """Say that the role may not read the version, and which privilege would let it.

    Only those: reading the version is all that tables already up to date need (a service's
    or a publisher's role may run migrate as a check); what an upgrade needs is said once
    the version says there is one.
    """
    doing = f'cannot read the version of the pg_queue tables in schema "{schema}"'
    try:
        row = conn.execute(_READING, (schema,)).fetchone()
    except psycopg.Error:
        row = None
    if row is None or (row[1] and row[2]):
        return f"{doing}: {exc}"
    user, usage, select = row
    role, name = quoted(user), quoted(schema)
    table = f"{name}.{VERSION_TABLE}"
    lacks = []
    if not usage:
        lacks.append((f"USAGE on schema {name}", f"GRANT USAGE ON SCHEMA {name} TO {role}"))
    if not select:
        lacks.append((f"SELECT on {table}", f"GRANT SELECT ON {table} TO {role}"))
    return (
        f"{doing} (whether they need a migration is not known): the role {role} lacks "
        f"{', '.join(what for what, _ in lacks)}: {'; '.join(grant for _, grant in lacks)}"
    )


def _locked(conn: psycopg.Connection[Any], schema: str, waited: float) -> str:
    """Say that a lock was not had in *waited* seconds, and who holds one of the tables."""
    message = (
        f"gave up after {waited:g} s waiting for a lock on the pg_queue tables in schema "
        f'"{schema}" (--timeout S waits longer); nothing was changed'
    )
    try:
        tables = [
            f"{quoted(schema)}.{table}" for table in ("jobs", VERSION_TABLE, "schedule_ticks")
        ]
        rows = conn.execute(_HOLDERS, (tables,)).fetchall()
    except psycopg.Error:
        return message
    holders = [
        f"pid {pid} ({escape(name, limit=64)}, {state}, transaction open {age} s)"
        for pid, name, state, age in rows
    ]
    return message + (f"; held by: {', '.join(holders)}" if holders else "")
