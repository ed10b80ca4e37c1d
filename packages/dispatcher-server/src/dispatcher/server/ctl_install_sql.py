"""``dispatcherctl install-sql``: create the SQL publishers' functions in the databases."""

from __future__ import annotations

import sys

import psycopg

from dispatcher.config import Settings
from dispatcher.publish import broker_unavailable, describe_server
from dispatcher.publish.connection_settings import connection_options
from dispatcher.publish.refusals import note_server, refused_for_good
from dispatcher.schema import sql_publisher, sql_queue_publisher
from dispatcher.server.ctl_columns import shown
from dispatcher.server.ctl_exits import EXIT_MISSING, EXIT_OK, EXIT_USAGE


def install_sql(settings: Settings) -> int:
    """Create (or replace) ``dispatcher_submit()`` and ``dispatcher_enqueue()``.

    ``dispatcher_submit()`` in the database of ``brokers.pg_notify``, ``dispatcher_enqueue()``
    in that of ``brokers.pg_queue`` (else of ``brokers.pg_notify``). Each file is one
    transaction, which refuses a schema where ``PUBLIC`` may create (a refusal: exit 2).
    """
    pg_notify, pg_queue = settings.brokers.pg_notify, settings.brokers.pg_queue
    installs: list[tuple[str, str, str]] = []
    if pg_notify is not None:
        installs.append(("dispatcher_submit()", pg_notify.conninfo, sql_publisher()))
    queue_database = pg_queue or pg_notify
    if queue_database is None:
        print(
            f"dispatcherctl: {settings.source} has no brokers.pg_notify nor brokers.pg_queue",
            file=sys.stderr,
        )
        return EXIT_USAGE
    installs.append(("dispatcher_enqueue()", queue_database.conninfo, sql_queue_publisher()))
    for function, conninfo, text in installs:
        try:
            with psycopg.connect(conninfo, autocommit=True, **connection_options(conninfo)) as conn:
                try:
                    conn.execute(text.encode())
                except psycopg.Error as exc:
                    note_server(exc, conn, conninfo)  # (a standby, or a read-only role: which)
                    raise
                # Where the file created it: the first schema of the session's search_path.
                row = conn.execute(b"SELECT pg_catalog.current_schema()").fetchone()
        except psycopg.Error as exc:
            failure = broker_unavailable(conninfo, exc, f"install {function} in")
            print(f"dispatcherctl: {shown(failure)}", file=sys.stderr)
            return EXIT_USAGE if refused_for_good(exc) else EXIT_MISSING
        schema = f'"{shown(row[0])}"' if row is not None and row[0] is not None else "?"
        print(f"installed {function} in schema {schema} of {describe_server(conninfo)}")
    return EXIT_OK
