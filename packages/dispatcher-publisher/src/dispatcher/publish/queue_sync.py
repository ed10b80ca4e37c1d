"""The durable queue's I/O from synchronous code.

Generated from ``queue_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, tzinfo
from typing import Any, Final

import psycopg
from psycopg import Connection, Cursor
from psycopg.pq import TransactionStatus

from dispatcher.config import ConfigError, NotConfiguredError, get_settings
from dispatcher.config.settings import dispatcherctl_command
from dispatcher.publish.broker_errors import (
    UNTRANSLATABLE,
    TextNotStorable,
    first_line,
    server_encoding,
)
from dispatcher.publish.caller_connections import caller_connection, caller_lost
from dispatcher.publish.errors import PublishError
from dispatcher.publish.job import (
    Job,
    JobState,
    check_listing,
    get_job_query,
    job_from_row,
    jobs_query,
    may_be_stored,
)
from dispatcher.publish.jsonb import register_tolerant_jsonb
from dispatcher.publish.pg_text import (
    checked_by_the_server,
    job_not_storable,
    job_refused,
    unstorable,
)
from dispatcher.publish.provider_registry_sync import shared_provider
from dispatcher.publish.timestamps import session_zone
from dispatcher.schema import migrations


def store(
    conninfo: str,
    schema: str,
    statement: str,
    rows: Sequence[list[Any]],
    connection: object,
    more: Sequence[Any] = (),
    what: str | None = None,
    *,
    resend: bool = True,
) -> None:
    """Run the insert *statement* with the column lists *rows* (then the parameters *more*).

    With *connection*, in its current transaction; else on the SDK's own connection to
    *conninfo*, where a lost connection is re-opened and the statement run once more (a uuid
    stored twice is skipped, so a repeat stores nothing twice), unless *resend* is false (a
    statement that also NOTIFYs, which a repeat would send twice).

    :raises BrokerUnavailable: when the database cannot be reached, or fails the statement
        in a way sending it again later may cure; when *connection* is closed or its
        transaction aborted (nothing is sent on it then).
    :raises PublishError: when the queue's tables are missing from *schema*, or older than
        a column of *statement* (not migrated: ``dispatcherctl migrate``); when the
        database refuses the rows for a reason no retry cures (a missing privilege), saying
        it refused *what* (default: the job, or the jobs).
    :raises InvalidSubmission: naming the job and the value, when a text holds a character
        the database's encoding lacks (checked first on *connection*, whose transaction is
        then left as it was).
    """
    params = [*rows, *more] if more else rows
    try:
        if connection is not None:
            caller = caller_connection(connection, Connection, "submit_task", "asubmit_task")
            server, client = _encodings(caller)
            refusal = job_not_storable(rows, [server], client)
            if refusal is not None:
                raise refusal
            cursor = caller.cursor()
            try:
                _run_on_caller(caller, cursor, statement, params, "send to", server)
            except psycopg.Error as exc:
                if exc.sqlstate not in UNTRANSLATABLE:
                    raise
                refusal = job_not_storable(rows, [server]) or job_refused(rows, server, str(exc))
                raise (refusal or exc) from exc
        else:
            what = what or _storing(rows)
            shared_provider(conninfo).execute(statement, params, what=what, resend=resend)
    except psycopg.errors.UndefinedTable:
        raise _tables_missing(schema) from None
    except psycopg.errors.UndefinedColumn as exc:
        raise _tables_too_old(schema, exc) from None
    except TextNotStorable as exc:
        refusal = job_not_storable(rows, [exc.encoding]) or job_refused(
            rows, exc.encoding, str(exc)
        )
        raise refusal or exc from None


def get_job(uuid: str, *, connection: Connection[Any] | None = None) -> Job | None:
    """Return the job of the durable queue whose message has this *uuid*, or ``None``.

    Read from the database of ``brokers.pg_queue`` (on the SDK's own connection, or on
    *connection*). A job stays readable until ``brokers.pg_queue.keep_finished`` after it
    ends. A *uuid* no job can have (one holding a NUL character or a lone surrogate, which
    PostgreSQL cannot store, and which ``submit_task()`` refuses) finds ``None`` without
    asking the database.

    :raises TypeError: when *uuid* is not a ``str``.
    :raises PublishError: when the config has no ``brokers.pg_queue``, or its tables are
        missing or older than this version needs (not migrated: ``dispatcherctl migrate``).
    :raises BrokerUnavailable: when the database cannot be reached, or *connection* is
        closed or its transaction aborted.
    """
    if not may_be_stored("uuid", uuid):
        return None
    names = ("get_job", "aget_job")
    rows, zone = _read(lambda schema: (get_job_query(schema), [uuid]), connection, names)
    return job_from_row(rows[0], zone) if rows else None


def jobs(
    *,
    state: JobState | None = None,
    queue: str | None = None,
    task: str | None = None,
    limit: int = 100,
    connection: Connection[Any] | None = None,
) -> list[Job]:
    """Return the jobs of the durable queues matching every filter given, newest first.

    At most *limit* of them (1-10000). Read as :func:`aget_job` reads: a *queue* or *task*
    no job can have (holding a NUL character or a lone surrogate) finds none.

    :raises TypeError: when *queue* or *task* is neither ``None`` nor a ``str``.
    :raises ValueError: when *state* or *limit* is not valid.
    :raises PublishError: when the config has no ``brokers.pg_queue``, or its tables are
        missing or older than this version needs (not migrated: ``dispatcherctl migrate``).
    :raises BrokerUnavailable: when the database cannot be reached, or *connection* is
        closed or its transaction aborted.
    """
    check_listing(state, limit)
    filters = (("queue", queue), ("task", task))
    if not all([may_be_stored(name, value, optional=True) for name, value in filters]):
        return []

    def query(schema: str) -> tuple[str, list[Any]]:
        return jobs_query(schema, state=state, queue=queue, task=task, limit=limit)

    names = ("jobs", "ajobs")
    rows, zone = _read(query, connection, names)
    return [job_from_row(row, zone) for row in rows]


def _read(
    query: Callable[[str], tuple[str, list[Any]]],
    connection: Connection[Any] | None,
    names: tuple[str, str],
) -> tuple[list[tuple[Any, ...]], tzinfo]:
    """Run the statement *query* builds for the schema; *names*: this function and its twin.

    Returns its rows, and the time zone of the session that read them.
    """
    conninfo, schema = _queue_database(connection is not None)
    statement, params = query(schema)
    try:
        if connection is not None:
            caller = caller_connection(connection, Connection, *names)
            texts = [("", param) for param in params if isinstance(param, str)]
            server, client = _encodings(caller)
            if unstorable(texts, [server], client) is not None:
                return [], UTC  # no row can hold it: asking would abort the caller's transaction
            cursor = caller.cursor()  # its adapters are its own: the caller's stay as they are
            register_tolerant_jsonb(cursor.adapters)
            try:
                _run_on_caller(caller, cursor, statement, params, "read from", server)
            except psycopg.Error as exc:
                if exc.sqlstate in UNTRANSLATABLE:
                    return [], UTC  # refused in a savepoint: the caller's transaction goes on
                raise
        else:
            provider = shared_provider(conninfo)
            cursor = provider.execute(statement, params, "read from", "to read the jobs")
        return cursor.fetchall(), session_zone(cursor.connection)
    except psycopg.errors.UndefinedTable:
        raise _tables_missing(schema) from None
    except psycopg.errors.UndefinedColumn as exc:
        raise _tables_too_old(schema, exc) from None
    except TextNotStorable:
        return [], UTC  # a text no row can hold, as the database's encoding lacks a character


def _encodings(connection: Connection[Any]) -> tuple[str | None, str | None]:
    """The encodings a text sent on the caller's *connection* must fit.

    Its database's, and the connection's own (its ``client_encoding``, which need not be UTF8).
    """
    try:
        client = connection.info.parameter_status("client_encoding")
    except psycopg.Error:
        client = None
    return server_encoding(connection), client


def _run_on_caller(
    caller: Connection[Any],
    cursor: Cursor[Any],
    statement: str,
    params: Sequence[Any],
    doing: str,
    encoding: str | None = None,
) -> None:
    """Run *statement* on the caller's connection, through *cursor*, one of its cursors.

    When its database's *encoding* is one whose characters the server alone judges
    (:func:`~dispatcher.publish.pg_text.checked_by_the_server`) and the statement runs in a
    transaction, it runs in a savepoint: a refusal of a character the encoding lacks
    (:data:`UNTRANSLATABLE`) leaves the caller's transaction as it was (two round trips
    more, for those databases only).

    :raises BrokerUnavailable: when the connection was lost (saying it is the caller's).
    :raises psycopg.Error: any other error, as psycopg raises it (the caller's transaction
        is aborted, as by any failed statement).
    """
    guarded = checked_by_the_server(encoding) and (
        not caller.autocommit or caller.info.transaction_status != TransactionStatus.IDLE
    )
    # Nothing is prepared on a caller's connection: it may go through a pooler in
    # transaction mode, which would keep the statement on a session it lends to others.
    try:
        if not guarded:
            cursor.execute(statement, params, prepare=False)
            return
        caller.execute(f"SAVEPOINT {_SAVEPOINT}", prepare=False)
        try:
            cursor.execute(statement, params, prepare=False)
        except psycopg.Error as exc:
            if exc.sqlstate in UNTRANSLATABLE:
                caller.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", prepare=False)
                caller.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)
            raise
        caller.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)
    except psycopg.Error as exc:
        lost = caller_lost(caller, exc, doing)
        if lost is None:
            raise
        raise lost from exc


_SAVEPOINT: Final = "dispatcher_text"
"""The savepoint of :func:`_run_on_caller`."""


def _queue_database(own_connection: bool) -> tuple[str, str]:
    """The conninfo and schema of ``brokers.pg_queue``.

    With a connection of the caller's and no config: no conninfo, the default schema.
    """
    try:
        settings = get_settings()
    except NotConfiguredError:
        if own_connection:
            return "", "dispatcher"
        raise
    section = settings.brokers.pg_queue
    if section is None:
        raise PublishError(f"cannot read jobs: {settings.source} has no brokers.pg_queue")
    return section.conninfo, section.schema


def _storing(rows: Sequence[list[Any]]) -> str:
    """What storing *rows* (one list per column) is called in an error."""
    return "to store the job" if rows and len(rows[0]) == 1 else "to store the jobs"


def _tables_missing(schema: str) -> PublishError:
    return PublishError(
        f"the durable queue's tables are missing from schema {schema!r}: "
        f"run `{_migrate_command()}` first (it creates them, or "
        "says what to do if they were damaged)"
    )


def _tables_too_old(schema: str, exc: psycopg.Error) -> PublishError:
    """The error for a statement refused for a column its table lacks (*exc*).

    The tables are older than this SDK needs: not migrated since an upgrade. Said as a
    service says it, but for the version they are at, which is not read (that would cost
    every call a round trip, or this failure one more on an aborted transaction).
    """
    latest = max((m.version for m in migrations()), default=0)
    return PublishError(
        f'the pg_queue tables in schema "{schema}" are older than version {latest}, which this '
        f"version of dispatcher needs: run '{_migrate_command()}' (the database said: "
        f"{first_line(exc)})"
    )


def _migrate_command() -> str:
    """``dispatcherctl migrate``, with the config's file when it was read from one."""
    try:
        config_file = get_settings().file
    except ConfigError:
        config_file = None  # the caller's connection, and no config
    return dispatcherctl_command("migrate", config_file)
