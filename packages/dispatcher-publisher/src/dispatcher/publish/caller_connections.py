"""The connection a caller passes (``connection=``): checking it, and wording its failures."""

from __future__ import annotations

import inspect
import os
import sys
from types import FrameType
from typing import Any, Final, TypeVar

import psycopg
from psycopg import BaseConnection
from psycopg.pq import TransactionStatus

from dispatcher.publish.broker_errors import first_line
from dispatcher.publish.errors import BrokerUnavailable, PublishError
from dispatcher.publish.server_description import describe_server
from dispatcher.schema import InvalidArgumentType

_C = TypeVar("_C")


_Conn = TypeVar("_Conn", bound="BaseConnection[Any]")

CALLER_CONNECTION: Final = "the connection passed as connection="
"""How errors name the caller's own connection (never its conninfo: it may hold a password)."""


def type_name(value: object) -> str:
    """The name of *value*'s type: with its module, unless a builtin's or psycopg's.

    ``Connection`` alone could be psycopg's, SQLAlchemy's or another library's.
    """
    kind = type(value)
    module = kind.__module__
    if module == "builtins" or module.split(".")[0] == "psycopg":
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


_UNREAD: Final = object()
"""What :func:`_static` gives for an attribute it does not read (a property, say)."""


def _static(value: object, name: str) -> object:
    """*value*'s attribute *name* if it is a plain value (``None`` if it has none).

    Computed attributes are not run (:data:`_UNREAD`): building an error message must not
    act on the object (SQLAlchemy's ``Connection.connection`` revalidates an invalidated
    connection, checking one out of the pool).
    """
    found = inspect.getattr_static(value, name, None)
    return _UNREAD if hasattr(type(found), "__get__") else found


def not_a_connection_hint(given: object) -> str:
    """What to pass instead of *given*, which is not a psycopg connection (or ``""``).

    A conninfo goes in the config; an object that wraps a psycopg connection (SQLAlchemy's
    ``Connection`` or DBAPI adapter, Django's connection) is asked for it. Read from its
    type and plain attributes only: nothing of it is called.
    """
    if isinstance(given, str | bytes):
        return " (a psycopg connection object: a conninfo string goes in the config)"
    package = type(given).__module__.split(".")[0]
    driver = _static(given, "driver_connection")
    if isinstance(driver, BaseConnection) or (package == "sqlalchemy" and driver is _UNREAD):
        return " (pass its psycopg connection: its .driver_connection)"
    inner = _static(given, "connection")
    if (inner is not None and isinstance(_static(inner, "driver_connection"), BaseConnection)) or (
        package == "sqlalchemy" and inner is _UNREAD
    ):
        return (
            " (pass its psycopg connection: .connection.driver_connection; with SQLAlchemy, "
            "session.connection().connection.driver_connection, or in asyncio "
            "(await conn.get_raw_connection()).driver_connection)"
        )
    if isinstance(inner, BaseConnection):
        return " (pass its psycopg connection: its .connection)"
    if package == "django" and (
        type(given).__name__ == "ConnectionProxy"  # django.db.connection: all is delegated
        or _static(given, "ensure_connection") is not None
    ):
        return (
            " (pass its psycopg connection: django.db.connection.connection, after "
            "django.db.connection.ensure_connection())"
        )
    return ""


def expect_connection(connection: object, expected: type[_C], caller: str, other: str) -> _C:
    """Return *connection* if it is of the *expected* kind, else say which function fits."""
    if not isinstance(connection, expected):
        hint = (
            f"; use {other}() with that connection"
            if isinstance(connection, BaseConnection)
            else not_a_connection_hint(connection) or " (a psycopg connection object)"
        )
        raise InvalidArgumentType(
            f"{caller}() needs a psycopg {expected.__name__}, got {type_name(connection)}{hint}"
        )
    return connection


def caller_connection(
    connection: object,
    expected: type[_Conn],
    caller: str,
    other: str,
    whose: str = CALLER_CONNECTION,
) -> _Conn:
    """Return the caller's *connection*, checked: of the *expected* kind, open, usable.

    Nothing is sent on it, so its transaction is left as it was, when it is closed or its
    transaction is aborted (an earlier statement failed): the error says which, and that
    it is the caller's connection (or *whose* it is).

    :raises TypeError: when it is not of the *expected* kind (naming the function to use).
    :raises BrokerUnavailable: when it is closed, or its transaction is aborted.
    """
    checked = expect_connection(connection, expected, caller, other)
    if checked.closed:
        raise BrokerUnavailable(f"cannot use {whose}: it is closed; nothing was sent")
    if in_use_here(checked):
        raise PublishError(
            f"cannot use {whose}: this thread is in the middle of a statement on it (a signal"
            " handler or a __del__ submitted on it while its thread was running one), and"
            " waiting for that statement to end would wait for ever; nothing was sent"
        )
    if checked.info.transaction_status == TransactionStatus.INERROR:
        raise BrokerUnavailable(
            f"cannot use {whose}: its transaction is aborted (an earlier statement "
            "failed), so it takes no more statements until it is rolled back; nothing was sent"
        )
    return checked


_PSYCOPG: Final = os.path.dirname(psycopg.__file__) + os.sep


def in_use_here(connection: BaseConnection[Any]) -> bool:
    """Whether this thread is in the middle of using *connection*, holding its lock.

    So it is for a signal handler (or a ``__del__``) that interrupted its thread running a
    statement on it: waiting for the lock would wait for ever. Looked at only while the lock
    is held (by this thread or another): a psycopg frame of this thread using *connection*.
    """
    lock = getattr(connection, "lock", None)
    if lock is None or not lock.locked():
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PSYCOPG):
            user = frame.f_locals.get("self")
            if user is connection or getattr(user, "_conn", None) is connection:
                return True
        frame = frame.f_back
    return False


def in_transaction(connection: BaseConnection[Any]) -> bool:
    """Whether *connection* is in a transaction, or may be (a statement running on it).

    A statement running in autocommit mode is in none, unless in a ``transaction()`` block
    (or after a ``BEGIN`` of the application's own, which cannot be seen while it runs).
    """
    status = connection.pgconn.transaction_status
    if status == TransactionStatus.IDLE:
        return False
    if status != TransactionStatus.ACTIVE or not connection.autocommit:
        return True
    return getattr(connection, "_num_transactions", 1) != 0  # (psycopg's transaction() blocks)


def caller_lost(
    connection: BaseConnection[Any],
    exc: psycopg.Error,
    doing: str,
    whose: str = CALLER_CONNECTION,
) -> BrokerUnavailable | None:
    """:func:`broker_unavailable` for the caller's own *connection*, lost while *doing*.

    ``None`` when *exc* left the connection working (a serialization failure, a lock or
    statement timeout, a constraint): the caller's own error, to be raised as it is, so that
    the caller's handling of it (retrying the transaction, say) still works.
    """
    if not (connection.closed or connection.broken):
        return None
    try:
        where = f"{describe_server(connection.info.dsn)} ({whose})"
    except psycopg.Error:  # the connection broke: its parameters cannot be read any more
        where = whose
    return BrokerUnavailable(f"cannot {doing} {where}: {first_line(exc)}")
