"""Reaching the durable queue's database from ``dispatcherctl``, and saying why that failed.

The connection the queue commands (:mod:`dispatcher.server.ctl_jobs`) and ``dispatcherctl
cancel``'s look at waiting durable jobs (:mod:`dispatcher.server.ctl_durable_cancel`) run
over, and the one line saying why a command failed in the database.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from dispatcher.publish import broker_unavailable, describe_server
from dispatcher.publish.broker_errors import stopped_answering
from dispatcher.publish.connection_settings import connection_options
from dispatcher.publish.refusals import with_cause
from dispatcher.server.log_text import first_line

DOING: Final = {
    "jobs": ("read", "reading"),
    "retry": ("change", "changing"),
    "purge": ("change", "changing"),
    "cancel-job": ("change", "changing"),
}
"""What each command does to the queue, as its errors word it."""


def connect(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection for a queue command.

    A dead peer is noticed (:func:`~dispatcher.publish.connection_settings.connection_options`): a
    network partition in the middle of a command fails it within about 20 s.
    """
    return psycopg.connect(
        conninfo, autocommit=True, connect_timeout=10, **connection_options(conninfo)
    )


def database_error(
    exc: psycopg.Error, conninfo: str, command: str, timeout: float, lost: bool = False
) -> str:
    """One line saying why *command* failed in the database of *conninfo* (no password).

    A lock or a statement that took too long, the database out of reach or refusing the
    command, the connection *lost* during a statement (the database stopped answering, or
    ended the session), or a value it could not take: each is worded as what it is.
    """
    verb, gerund = DOING[command]
    if lost:
        then = "" if verb == "read" else "the change may or may not have been made"
        return str(stopped_answering(conninfo, exc, f"{verb} the queue in", "the command", then))
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return (
            "the jobs table (or a job's row) is locked by another session: gave up after "
            f"{timeout:g} s (--timeout S waits longer)"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"the database cancelled a statement on the jobs table: {first_line(exc)}"
    unreachable = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    if unreachable or isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return str(broker_unavailable(conninfo, exc, f"{verb} the queue in"))
    reason = with_cause(exc, first_line(exc))
    return f"{gerund} the queue in {describe_server(conninfo)} failed: {reason}"
