"""``dispatcherctl migrate``: create or upgrade the tables of the durable pg_queue broker."""

from __future__ import annotations

import sys
from typing import Final

import psycopg

from dispatcher.config import Settings
from dispatcher.publish import broker_unavailable, describe_server
from dispatcher.server.brokers.pg_queue.migrations import (
    MigrationError,
    migrate,
    plan,
    read_version,
)

EXIT_OK: Final = 0
EXIT_UNREACHABLE: Final = 1
EXIT_USAGE: Final = 2


def migrate_command(settings: Settings, print_only: bool = False) -> int:
    """Bring the pg_queue tables to this version (or, with *print_only*, print the SQL).

    Returns the exit status: 0 when done (or nothing to do), 1 when the database cannot be
    reached, 2 when the config has no ``brokers.pg_queue`` or the tables are newer than
    this version.
    """
    section = settings.brokers.pg_queue
    if section is None:
        print(f"dispatcherctl: {settings.source} has no brokers.pg_queue", file=sys.stderr)
        return EXIT_USAGE
    schema, conninfo = section.schema, section.conninfo
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            if print_only:
                print(plan(schema, read_version(conn, schema) or 0).script(), end="")
                return EXIT_OK
            done = migrate(conn, schema)
    except MigrationError as exc:
        print(f"dispatcherctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except psycopg.Error as exc:
        failure = broker_unavailable(conninfo, exc, "migrate the pg_queue tables in")
        print(f"dispatcherctl: {failure}", file=sys.stderr)
        return EXIT_UNREACHABLE
    where = f'the pg_queue tables in schema "{schema}" of {describe_server(conninfo)}'
    if done.pending:
        print(f"migrated {where} from version {done.current} to {done.latest}")
    else:
        print(f"{where} are at version {done.current}: nothing to do")
    return EXIT_OK
