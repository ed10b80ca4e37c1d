"""What every operator command on the durable queue's tables does first.

``dispatcherctl jobs``, ``retry``, ``purge``, ``cancel-job`` and ``submit`` run over one
synchronous connection to the database of ``brokers.pg_queue``: here they find that
section of the config, check that the tables exist and are migrated, bound how long a
statement waits for a lock, and name the jobs table. What each then does is in a module of
its own: listing (:mod:`~dispatcher.server.queue_admin_list`), retrying
(:mod:`~dispatcher.server.queue_admin_retry`), cancelling waiting jobs
(:mod:`~dispatcher.server.queue_admin_cancel`) and purging
(:mod:`~dispatcher.server.queue_admin_purge`). None holds a transaction open longer than one
command (long transactions hold back vacuum on a hot queue table).

Every change re-checks, on the row it writes, the conditions it chose the row by: a row that
another session (a retry, a service, the services' own purge) changes meanwhile is left as
that session made it.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.config import PgQueueBroker, Settings
from dispatcher.config.settings import dispatcherctl_command
from dispatcher.publish.connection_settings import through_transaction_pooler
from dispatcher.schema import DispatcherError
from dispatcher.server.brokers.pg_queue.migrations import (
    VERSION_TABLE,
    damaged,
    problem,
    read_version,
)


class QueueNotConfigured(DispatcherError):
    """The config has no ``brokers.pg_queue`` section."""


class TablesMissing(DispatcherError):
    """The queue's tables do not exist in the configured schema, or are at an older version.

    Not migrated yet, or not since this version of dispatcher was installed.
    """


def queue_settings(settings: Settings) -> PgQueueBroker:
    """The ``brokers.pg_queue`` section of *settings*, or :class:`QueueNotConfigured`."""
    section = settings.brokers.pg_queue
    if section is None:
        raise QueueNotConfigured(f"{settings.source} has no brokers.pg_queue")
    return section


def queue_known(conn: psycopg.Connection[Any], section: PgQueueBroker, queue: str) -> bool:
    """Whether *queue* is one the config lists, or one that some job of the table names."""
    if queue in section.queues:
        return True
    statement = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE queue = %s)")
    row = conn.execute(statement.format(jobs_table(section.schema)), (queue,)).fetchone()
    return bool(row and row[0])


def jobs_table(schema: str) -> sql.Composed:
    """The jobs table of *schema*, as SQL: ``"schema".jobs``."""
    return sql.SQL("{}.jobs").format(sql.Identifier(schema))


def check_tables(conn: psycopg.Connection[Any], schema: str, config_file: str | None) -> None:
    """Raise :class:`TablesMissing` unless *schema* holds the queue's tables, migrated.

    Refused: tables missing, damaged, or at a version older than this code needs (said as a
    service says it, naming ``dispatcherctl migrate``); newer ones are taken (a rolling
    upgrade). A role that may not read the version gets the existence check alone.
    *config_file* is the config's file (:attr:`Settings.file`), for the command to run.
    """
    try:
        found = read_version(conn, schema)
    except psycopg.errors.InsufficientPrivilege:
        _check_jobs_table(conn, schema, config_file)
        return
    if found is None or found == 0:
        raise TablesMissing(_missing(schema, config_file))
    refusal = problem(found, schema, config_file)
    if refusal is not None:
        raise TablesMissing(refusal)


def _missing(schema: str, config_file: str | None) -> str:
    return (
        f"the durable queue's tables are missing from schema {schema!r}: "
        f"run `{dispatcherctl_command('migrate', config_file)}` first (it creates them, or "
        "says what to do if they were damaged)"
    )


def _check_jobs_table(conn: psycopg.Connection[Any], schema: str, config_file: str | None) -> None:
    """Raise :class:`TablesMissing` unless *schema* holds the queue's ``jobs`` table."""
    name = sql.Identifier(schema).as_string(conn)
    row = conn.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL, pg_catalog.to_regclass(%s) IS NOT NULL",
        (f"{name}.jobs", f"{name}.{VERSION_TABLE}"),
    ).fetchone()
    if row is not None and not row[0] and row[1]:  # migrated, then the jobs table dropped
        raise TablesMissing(damaged(schema))
    if not (row and row[0]):
        raise TablesMissing(_missing(schema, config_file))


MAX_SETTING_MS: Final = 2_147_483_647
"""The largest number of milliseconds a PostgreSQL timeout setting takes."""


def limit_waits(conn: psycopg.Connection[Any], lock_timeout: float, conninfo: str) -> None:
    """Make *conn*'s statements wait at most *lock_timeout* seconds for a lock.

    A statement that waits longer fails with :class:`psycopg.errors.LockNotAvailable`,
    which undoes what its transaction did. How long a statement runs once it has its locks
    is not bounded here: retrying a million failed jobs takes as long as it takes.

    Nothing is set through a pooler: when the config marks *conninfo* (the connection's)
    ``transaction_pooler``, or when the server session is not the connection's own (the
    process id given at connection is the pooler's, whatever its mode). In transaction mode
    the setting would stay on a server session the pooler lends to other clients after this
    one is gone (their statements then cancelled after *lock_timeout* waiting for a lock).
    The role's ``lock_timeout`` applies then, and *conn* prepares no statement either.
    """
    if through_transaction_pooler(conninfo) or _behind_a_pooler(conn):
        conn.prepare_threshold = None
        return
    conn.execute(
        "SELECT pg_catalog.set_config('lock_timeout', %s, false)", (_milliseconds(lock_timeout),)
    )


def _behind_a_pooler(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_catalog.pg_backend_pid()", prepare=False).fetchone()
    return row is not None and int(row[0]) != conn.info.backend_pid


def _milliseconds(seconds: float) -> str:
    """*seconds* as a setting PostgreSQL takes (1 ms to its largest, about 24 days)."""
    return f"{min(MAX_SETTING_MS, max(1, round(seconds * 1000)))}ms"
