"""Telling a refusal for good from a standby's, and saying why a write was refused as read-only."""

from __future__ import annotations

import os
from typing import Any, Final

import psycopg
from psycopg import BaseConnection
from psycopg.conninfo import conninfo_to_dict

REFUSALS: Final = (
    psycopg.ProgrammingError,
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.NotSupportedError,
    psycopg.errors.ReadOnlySqlTransaction,
)
"""The errors of a statement the database refuses, and will refuse again however often it is
sent: a missing privilege, table or schema (SQLSTATE classes 42 and 3F), data it does not
take (22, 23), a feature it lacks (0A), an exception raised on purpose (P0), a write in a
read-only database (25006: see :data:`READ_ONLY`), unless the server is a standby (see
:func:`refused_for_good`). Not a lost connection (08), a shutdown (57P), a cancelled
statement, a lock or serialization failure, a lack of resources: a retry may succeed after
those."""

READ_ONLY_SQLSTATE: Final = "25006"
"""``read_only_sql_transaction``: a write refused in a read-only transaction."""

READ_ONLY: Final = (
    "the database or the role is read-only (default_transaction_read_only, or a standby)"
)
"""What a write refused with :data:`READ_ONLY_SQLSTATE` means, which its message does not
say, when the server does not tell whether it is a standby (before PostgreSQL 14):
``default_transaction_read_only`` is on for the role or the database (a setting that stays
until an operator changes it), or the server is a standby (after a failover, say, the
conninfo still leading to the old primary)."""

READ_ONLY_ROLE: Final = "the database or the role is read-only (default_transaction_read_only)"
""":data:`READ_ONLY` when the server says it is no standby: a setting an operator must
change. Counted among the :data:`REFUSALS`: sending the same statement again does not help."""

STANDBY: Final = (
    "the server reached ({reached}) is a standby (in_hot_standby = on): a failover or a"
    " switchover may be under way"
)
""":data:`READ_ONLY` when the server says it is a standby in recovery (PostgreSQL 14 and
later report ``in_hot_standby``): temporary while a VIP, a proxy or DNS record moves to the
new primary, so not a refusal for good; the connection is replaced."""

READ_WRITE_HINT: Final = (
    "; the conninfo names several hosts: add target_session_attrs=read-write to it so that"
    " each connection goes to the primary"
)
"""Appended to :data:`STANDBY` (or :data:`READ_ONLY`) when the conninfo names several hosts
without asking libpq for the primary among them."""


def hot_standby(connection: BaseConnection[Any] | None) -> bool | None:
    """Whether *connection*'s server is a standby in recovery (``None``: it does not say).

    Read from the parameters the server reports (``in_hot_standby``, PostgreSQL 14 and later):
    no round trip.
    """
    if connection is None:
        return None
    try:
        value = connection.info.parameter_status("in_hot_standby")
    except psycopg.Error:  # the connection is broken: its parameters cannot be read
        return None
    return None if value is None else value == "on"


def reached_server(connection: BaseConnection[Any]) -> str:
    """The host and port *connection* reached (of the several its conninfo may name)."""
    try:
        info = connection.info
        return f"{info.host}, port {info.port}"
    except psycopg.Error:  # the connection is broken: its parameters cannot be read
        return "its host unknown"


def _conninfo_value(conninfo: str, key: str, variable: str) -> str:
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        params = {}
    return str(params.get(key) or os.environ.get(variable) or "")


def several_hosts_any_session(conninfo: str) -> bool:
    """Whether *conninfo* names several hosts and may land on any of them (a standby too)."""
    hosts = _conninfo_value(conninfo, "host", "PGHOST") or _conninfo_value(
        conninfo, "hostaddr", "PGHOSTADDR"
    )
    attrs = _conninfo_value(conninfo, "target_session_attrs", "PGTARGETSESSIONATTRS")
    return "," in hosts and attrs not in ("read-write", "primary")


_NOTED: Final = "dispatcher_read_only"
"""The attribute :func:`note_server` keeps on an error: ``(cause, on a standby)``."""


def note_server(exc: BaseException, connection: BaseConnection[Any], conninfo: str) -> None:
    """Keep on *exc*, a write refused as read-only, what *connection*'s server says of itself.

    For :func:`with_cause` and :func:`on_standby` once the connection is gone (closed
    before the error is worded). Nothing for another error.
    """
    if getattr(exc, "sqlstate", None) == READ_ONLY_SQLSTATE:
        standby = hot_standby(connection) is True
        setattr(exc, _NOTED, (read_only_cause(connection, conninfo), standby))


def on_standby(exc: BaseException, connection: BaseConnection[Any] | None = None) -> bool:
    """Whether *exc* is a write refused because the server is a standby.

    The server of *connection*, or the one :func:`note_server` noted.
    """
    if not isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return False
    noted = getattr(exc, _NOTED, None)
    if connection is None and noted is not None:
        return bool(noted[1])
    return hot_standby(connection) is True


def refused_for_good(exc: BaseException, connection: BaseConnection[Any] | None = None) -> bool:
    """Whether *exc* is among the :data:`REFUSALS`, a standby's refusal excepted.

    A write refused by a standby (:func:`on_standby`) may pass on the next connection, once
    the VIP or proxy in front of the servers leads to the new primary.
    """
    return isinstance(exc, REFUSALS) and not on_standby(exc, connection)


def read_only_cause(connection: BaseConnection[Any] | None, conninfo: str = "") -> str:
    """Why a write on *connection* (to *conninfo*) was refused as read-only.

    :data:`STANDBY` (naming the host reached) when its server says it is a standby,
    :data:`READ_ONLY_ROLE` when it says it is not, else :data:`READ_ONLY`; with
    :data:`READ_WRITE_HINT` when *conninfo* names several hosts and may land on a standby.
    """
    standby = hot_standby(connection)
    if standby is False:
        return READ_ONLY_ROLE
    if standby and connection is not None:
        cause = STANDBY.format(reached=reached_server(connection))
    else:
        cause = READ_ONLY
    return cause + (READ_WRITE_HINT if several_hosts_any_session(conninfo) else "")


def with_cause(
    exc: BaseException,
    text: str,
    connection: BaseConnection[Any] | None = None,
    conninfo: str = "",
) -> str:
    """*text* (a line saying what *exc* is), with the cause that *exc*'s message lacks.

    For a write refused as read-only, :func:`read_only_cause` (of *connection*, or as
    :func:`note_server` noted it); else *text* alone.
    """
    if getattr(exc, "sqlstate", None) != READ_ONLY_SQLSTATE:
        return text
    noted = getattr(exc, _NOTED, None)
    if connection is None and noted is not None:
        return f"{text}: {noted[0]}"
    return f"{text}: {read_only_cause(connection, conninfo)}"
