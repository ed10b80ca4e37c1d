"""Django's database connections in the service's processes: around a fork, around a task.

Before a fork, the forking process closes its connections and its connection pools
(``OPTIONS["pool"]``): a child must not inherit a connection, nor a pool holding some, whose
socket its parent or a sibling also uses (and whose threads a fork does not copy).

A task stopped by a signal (its timeout, a cancel) in the middle of a statement leaves the
connection busy with it: psycopg cancels a statement on Ctrl-C, not on an exception it does
not know, and the statement would run on in the server (holding its locks) while the next
query on the connection failed with ``another command is already in progress``. Such a
statement is cancelled in the server, and its result read, so that the connection is usable
again (else it is closed).
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import psycopg
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.pq import TransactionStatus

STOP_WAIT: Final = 2.0
"""Seconds given to the server to cancel an interrupted statement and say it did."""


def close_connections_and_pools() -> None:
    """Close this thread's Django connections, and the connection pools of this process."""
    connections.close_all()
    for alias in connections:
        database = connections[alias]
        close_pool = getattr(database, "close_pool", None)  # PostgreSQL, Django 5.1 or later
        if close_pool is not None and (database.settings_dict.get("OPTIONS") or {}).get("pool"):
            close_pool()


def settle_connections() -> None:
    """Stop the statement a task left running on any Django connection of this thread."""
    for database in connections.all(initialized_only=True):
        settle(database)


def settle(database: BaseDatabaseWrapper) -> None:
    """Cancel the statement left running on *database* and read its end; else close it."""
    raw = database.connection
    if not isinstance(raw, psycopg.Connection):  # closed, or psycopg2 (never interrupted so)
        return
    if raw.info.transaction_status != TransactionStatus.ACTIVE:
        return
    if not stop_statement(raw):
        database.close()


def stop_statement(raw: psycopg.Connection[Any], wait: float = STOP_WAIT) -> bool:
    """Cancel the statement under way on *raw* and read its results; whether that worked.

    Afterwards the connection is idle, or in a failed transaction to roll back, as after any
    statement that failed.
    """
    deadline = time.monotonic() + wait
    with contextlib.suppress(psycopg.Error):
        raw.cancel_safe(timeout=wait)
    pgconn = raw.pgconn
    try:
        pgconn.consume_input()
        while pgconn.is_busy():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pgconn.socket], [], [], left)[0]:
                return False
            pgconn.consume_input()
        while pgconn.get_result() is not None:
            pass
    except (psycopg.Error, OSError):
        return False
    return raw.info.transaction_status != TransactionStatus.ACTIVE


def settling_on_interrupt(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Mapping[str, Any]
) -> Any:
    """An execute wrapper (``connection.execute_wrappers``) that settles an interrupted query.

    On an exception that is not an ``Exception`` (a task's cancel, ``KeyboardInterrupt``),
    the statement is stopped at once, before an ``atomic()`` block the query is in rolls back
    (which it could not do on a busy connection: Django would close it, leaving the
    statement running in the server).
    """
    try:
        return execute(sql, params, many, context)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            settle(context["connection"])
        raise


def settle_interrupted_queries() -> None:
    """Have every Django connection of this thread settle a query that a signal interrupts."""
    for alias in connections:
        wrappers = connections[alias].execute_wrappers
        if settling_on_interrupt not in wrappers:
            wrappers.insert(0, settling_on_interrupt)
