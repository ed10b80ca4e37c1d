"""Saying where a conninfo or a connection points (host, port, database, user), no password."""

from __future__ import annotations

import os
from typing import Any, Final

import psycopg
from psycopg import BaseConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo

LIBPQ_ENVIRONMENT: Final = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
}
"""The environment variables libpq reads for the parameters a conninfo leaves out."""


def describe_server(conninfo: str) -> str:
    """Say where *conninfo* points (host, port, database, user), never its password.

    A parameter the conninfo leaves out is taken from libpq's environment variable for it
    (:data:`LIBPQ_ENVIRONMENT`), as libpq does when it connects; without either, no host
    means the local socket.
    """
    params = conninfo_to_dict(conninfo)

    def given(key: str) -> str:
        return str(params.get(key) or os.environ.get(LIBPQ_ENVIRONMENT[key]) or "")

    written = params.get("host") or params.get("hostaddr")  # (before the environment's)
    host = str(written or "") or given("host") or given("hostaddr") or "the local socket"
    parts = [f"PostgreSQL at {host}"]
    if port := given("port"):
        parts.append(f"port {port}")
    if dbname := given("dbname"):
        parts.append(f"database {dbname!r}")
    if user := given("user"):
        parts.append(f"user {user!r}")
    return ", ".join(parts)


def describe_connection(connection: BaseConnection[Any], conninfo: str) -> str:
    """:func:`describe_server` for *connection*, opened with *conninfo*: the host it reached.

    A conninfo may name several hosts (``host=db1,db2``): the line names the one the
    connection went to (after a failover, the new primary).
    """
    where = describe_server(conninfo)
    try:
        params = conninfo_to_dict(conninfo)
        host, port = connection.info.host, connection.info.port
    except psycopg.Error:  # broken meanwhile: its parameters cannot be read any more
        return where
    if "," not in str(params.get("host") or params.get("hostaddr") or ""):
        return where
    reached = {key: value for key, value in params.items() if key != "hostaddr"}
    return describe_server(make_conninfo("", **{**reached, "host": host, "port": port}))
