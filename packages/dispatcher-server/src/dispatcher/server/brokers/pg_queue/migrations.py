"""Creating and upgrading the tables of the pg_queue broker: versioned migrations.

Each migration (``dispatcher.schema.migrations()``) runs once per PostgreSQL schema; the
table ``{schema}.migrations`` records which have. :func:`migrate` applies the missing ones
in one transaction, after taking an advisory lock so that two concurrent runs wait for
each other (the second then finds nothing to do). It never downgrades: a database newer
than this code is refused with a message saying so. :func:`plan` is the same work as
text, for ``dispatcherctl migrate --print``.

A service checks the version when it starts (:func:`problem`): it refuses tables that are
missing or older than the code needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.config.settings import dispatcherctl_command
from dispatcher.schema import DispatcherError, migrations

VERSION_TABLE: Final = "migrations"
"""The table, in the queue's schema, that records the migrations applied."""


class MigrationError(DispatcherError):
    """The tables cannot be migrated: the database is newer than this code."""


class VersionUnreadable(DispatcherError):
    """The role may not read the version of the tables: whether they need a migration is unknown.

    Reading it takes ``USAGE`` on their schema and ``SELECT`` on its ``migrations`` table.
    """


def latest_version() -> int:
    """The version of the tables this code needs (the last migration it ships)."""
    return max((m.version for m in migrations()), default=0)


def quoted(schema: str) -> str:
    """*schema* as a quoted SQL identifier."""
    return sql.Identifier(schema).as_string(None)


DAMAGED: Final = -1
"""The version read when migrations are recorded but the jobs table is gone (dropped by
hand): no migration can bring that back by itself."""


UNRECORDED: Final = -2
"""The version read when a jobs table is there but no migration is recorded (the version
table dropped or emptied by hand, or a table of the application's named ``jobs``)."""

ASK: Final = 1
"""What the first of :func:`version_queries` gives when the second must be asked."""


def version_queries(schema: str) -> tuple[str, str]:
    """Two queries: what is there (one row, an integer), then the version recorded.

    The first gives ``0`` when there are no tables, :data:`UNRECORDED` when there is a jobs
    table but no version table, and :data:`ASK` when there is a version table: then run the
    second. It gives :data:`DAMAGED` when versions are recorded but the jobs table is
    missing, and :data:`UNRECORDED` when none is but the jobs table is there.
    """
    table = f"{quoted(schema)}.{VERSION_TABLE}"
    jobs = f"pg_catalog.to_regclass({sql.Literal(f'{quoted(schema)}.jobs').as_string(None)})"
    exists = (
        "SELECT CASE WHEN pg_catalog.to_regclass("
        f"{sql.Literal(table).as_string(None)}) IS NOT NULL THEN {ASK}"
        f" WHEN {jobs} IS NOT NULL THEN {UNRECORDED} ELSE 0 END"
    )
    version = (
        f"SELECT CASE WHEN pg_catalog.max(version) > 0 AND {jobs} IS NULL THEN {DAMAGED}"
        f" WHEN coalesce(pg_catalog.max(version), 0) = 0 AND {jobs} IS NOT NULL"
        f" THEN {UNRECORDED}"
        f" ELSE coalesce(pg_catalog.max(version), 0) END FROM {table}"
    )
    return exists, version


def damaged(schema: str) -> str:
    """What to do about the tables of *schema* when their jobs table is gone.

    Only the queue's own tables are named: the schema may hold the application's too
    (``public``, say).
    """
    name = quoted(schema)
    return (
        f'the pg_queue tables in schema "{schema}" are damaged: migrations are recorded but '
        f"the jobs table is missing (dropped by hand?); restore it, or drop the queue's other "
        f"tables (DROP TABLE {name}.schedule_ticks, {name}.{VERSION_TABLE}) and run "
        "'dispatcherctl migrate' again"
    )


def unrecorded(schema: str) -> str:
    """What to do when *schema* holds a jobs table but records no migration."""
    return (
        f'the pg_queue tables in schema "{schema}" are damaged: a jobs table is there but no '
        f"migration is recorded in {quoted(schema)}.{VERSION_TABLE} (dropped or emptied by "
        "hand?); restore that table, or, if this jobs table is the application's, give the "
        "queue a schema of its own (brokers.pg_queue.schema)"
    )


def problem(version: int | None, schema: str, config: str | None) -> str | None:
    """Why a service cannot use tables at *version* (``None``: missing), or ``None``.

    *config* is the config file to name in the command to run (``None`` for a dict).
    """
    latest = latest_version()
    if version is not None and version >= latest:
        return None
    if version == DAMAGED:
        return damaged(schema)
    if version == UNRECORDED:
        return unrecorded(schema)
    command = dispatcherctl_command("migrate", config)
    where = f'the pg_queue tables in schema "{schema}"'
    if version is None or version == 0:
        return f"{where} are missing: run '{command}'"
    return f"{where} are at version {version}, this version needs {latest}: run '{command}'"


@dataclass(frozen=True)
class Plan:
    """What :func:`migrate` does to bring the tables from :attr:`current` to :attr:`latest`."""

    schema: str
    current: int
    """The version found (``0``: no tables)."""
    latest: int
    """The version this code needs."""
    setup: tuple[str, ...]
    """The lock, the schema and the version table: run every time."""
    steps: tuple[str, ...]
    """The missing migrations, each followed by the row recording it."""

    @property
    def statements(self) -> tuple[str, ...]:
        """Every statement, in order, run in one transaction."""
        return self.setup + self.steps

    @property
    def pending(self) -> list[int]:
        """The versions that would be applied."""
        return list(range(self.current + 1, self.latest + 1))

    def script(self, lock_wait: float | None = None) -> str:
        """The statements as one SQL script, in a transaction (a comment when up to date).

        It waits for another migration (the advisory lock) however long that takes, as
        :func:`migrate` does. With *lock_wait*, it bounds its waits for a lock on the tables
        as :func:`migrate` does: each statement after the advisory lock waits at most that
        many seconds, then the whole script fails and changes nothing.
        """
        if not self.steps:
            return (
                f"-- dispatcher pg_queue tables in schema {quoted(self.schema)}: "
                f"at version {self.current}, nothing to do\n"
            )
        wait, *rest = [f"{s.strip().rstrip(';')};\n\n" for s in self.statements]
        bound = []
        if lock_wait is not None:
            seconds = _lock_timeout(lock_wait)
            bound.append(
                f"-- Each statement waits at most {seconds} for a lock on the tables (a\n"
                "-- long transaction of another session): queued behind it for its ACCESS\n"
                "-- EXCLUSIVE lock, this script would hold up every publisher and service.\n"
                "-- If it gives up (ERROR: canceling statement due to lock timeout), nothing\n"
                "-- changed: run it again, once that transaction has ended.\n"
                f"SET LOCAL lock_timeout = '{seconds}';\n\n",
            )
        statements = [
            "-- Another migration is waited for however long it takes, whatever the\n"
            "-- role's or the database's lock_timeout and statement_timeout.\n"
            f"{_UNBOUNDED_WAIT};\n\n",
            wait,
            f"{_BOUNDED_AGAIN};\n\n",
            *bound,
            *rest,
        ]
        header = (
            f"-- dispatcher pg_queue tables in schema {quoted(self.schema)}: "
            f"version {self.current} -> {self.latest}\n"
        )
        return f"{header}BEGIN;\n\n{''.join(statements)}COMMIT;\n"


def _lock_timeout(seconds: float) -> str:
    """*seconds* as a ``lock_timeout`` PostgreSQL takes (1 ms to its largest)."""
    return f"{min(2_147_483_647, max(1, round(seconds * 1000)))}ms"


def plan(schema: str, current: int) -> Plan:
    """The statements that take the tables of *schema* from version *current* to the latest.

    :raises MigrationError: when *current* is newer than this code knows, or the tables are
        damaged (:data:`DAMAGED`, :data:`UNRECORDED`).
    """
    latest = latest_version()
    if current == DAMAGED:
        raise MigrationError(damaged(schema))
    if current == UNRECORDED:
        raise MigrationError(unrecorded(schema))
    if current > latest:
        raise MigrationError(
            f'the pg_queue tables in schema "{schema}" are at version {current}, newer than '
            f"this version of dispatcher knows ({latest}): upgrade dispatcher; migrations "
            "never downgrade"
        )
    name = quoted(schema)
    steps = []
    for migration in migrations():
        if migration.version > current:
            steps.append(_in_schema(migration.text, name))
            steps.append(
                f"INSERT INTO {name}.{VERSION_TABLE} (version) VALUES ({migration.version})"
            )
    return Plan(schema, current, latest, _setup(schema), tuple(steps))


def _in_schema(text: str, name: str) -> str:
    """*text* with ``{schema}`` replaced by *name*, outside comments (which keep saying it)."""
    lines = text.splitlines()
    return "\n".join(
        line if line.lstrip().startswith("--") else line.replace("{schema}", name) for line in lines
    )


def _setup(schema: str) -> tuple[str, ...]:
    name = quoted(schema)
    lock_key = sql.Literal(f"dispatcher.migrate:{schema}").as_string(None)
    return (
        f"SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended({lock_key}, 0))",
        # Created only when missing: CREATE SCHEMA IF NOT EXISTS needs the right to create
        # schemas in the database even when this one exists (a DBA may have made it).
        "DO $$BEGIN IF pg_catalog.to_regnamespace("
        f"{sql.Literal(name).as_string(None)}) IS NULL THEN CREATE SCHEMA {name}; END IF; END$$",
        f"CREATE TABLE IF NOT EXISTS {name}.{VERSION_TABLE} (\n"
        "    version     integer PRIMARY KEY,\n"
        "    applied_at  timestamptz NOT NULL DEFAULT pg_catalog.now()\n"
        ")",
    )


def read_version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The version of the tables of *schema* (see :func:`version_queries`); ``None``: no tables."""
    exists, version = version_queries(schema)
    row = conn.execute(exists.encode()).fetchone()
    found = 0 if row is None else int(row[0])
    if found != ASK:
        return found or None
    row = conn.execute(version.encode()).fetchone()
    return 0 if row is None else int(row[0])


def version_to_migrate(conn: psycopg.Connection[Any], schema: str) -> int:
    """The version of the tables of *schema*, ``0`` when there are none.

    :raises VersionUnreadable: when the role may not read it.
    """
    try:
        return read_version(conn, schema) or 0
    except psycopg.errors.InsufficientPrivilege as exc:
        raise VersionUnreadable(str(exc).strip()) from exc


_UNBOUNDED_WAIT: Final = "SET LOCAL lock_timeout = 0;\nSET LOCAL statement_timeout = 0"
"""Before the wait for another migration: however long it takes, whatever the role's or the
database's ``lock_timeout`` and ``statement_timeout`` (this transaction only)."""

_BOUNDED_AGAIN: Final = "SET LOCAL statement_timeout TO DEFAULT"
"""After it: the role's (or the database's, or the conninfo's) ``statement_timeout`` again."""


def bound_lock_waits(conn: psycopg.Connection[Any], seconds: float) -> None:
    """Have each statement of the transaction under way wait at most *seconds* for a lock.

    Then it fails with :class:`psycopg.errors.LockNotAvailable`. Needs no privilege.
    """
    conn.execute(
        b"SELECT pg_catalog.set_config('lock_timeout', %s, true)", (_lock_timeout(seconds),)
    )


def migrate(conn: psycopg.Connection[Any], schema: str, lock_wait: float | None = None) -> Plan:
    """Bring the tables of *schema* to the latest version, in one transaction.

    Safe to run again (it then does nothing) and concurrently (the runs take turns: a
    second run waits for the first however long it takes, whatever the role's
    ``lock_timeout`` and ``statement_timeout``; the latter applies again once it is over).
    With *lock_wait*, each step waits at most that many seconds for a lock on the tables
    (another session's transaction), then fails with
    :class:`psycopg.errors.LockNotAvailable`, leaving the tables as they were. Returns what
    was done (:attr:`Plan.pending` is empty when nothing was).

    The version is read first (its wait for a lock bounded by *lock_wait* too): tables
    already at the latest version need no privilege but reading it (a service's role may
    run it), and nothing is created.

    :raises MigrationError: when the tables are newer than this code.
    :raises VersionUnreadable: when the role may not read their version.
    """
    with conn.transaction():
        conn.execute(_UNBOUNDED_WAIT.encode())
        first, *setup = _setup(schema)
        conn.execute(first.encode())  # waits for a concurrent run to commit
        conn.execute(_BOUNDED_AGAIN.encode())
        if lock_wait is not None:  # from here on, each wait for a lock is bounded
            bound_lock_waits(conn, lock_wait)
        work = plan(schema, version_to_migrate(conn, schema))
        if not work.steps:
            return work
        for statement in (*setup, *work.steps):
            conn.execute(statement.encode())
    return work
