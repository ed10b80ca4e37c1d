"""The PostgreSQL brokers' connections: opening one, and starting a LISTEN session on it.

Used by ``pg_notify`` (its listening connection) and ``pg_queue`` (its working connection,
and the one that listens for its wake-ups).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import psycopg
from psycopg import sql

from dispatcher.publish.connection_settings import connection_options
from dispatcher.server.resources import names_shortages


@names_shortages  # (out of threads or file descriptors: an OSError, retried as one)
async def open_connection(conninfo: str, application_name: str) -> psycopg.AsyncConnection[Any]:
    """Open an autocommit connection for a broker.

    With a connect timeout, TCP keepalives and a bound on unacknowledged data, so that a
    silently dead server is noticed within about 20 s (see
    :data:`~dispatcher.publish.connection_settings.LIVENESS`).
    """
    return await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        application_name=application_name,
        connect_timeout=10,
        **connection_options(conninfo),
    )


NEVER_IDLE_OUT: Final = (
    "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings"
    " WHERE name = 'idle_session_timeout'"
)
"""Keeps a LISTEN session from being ended for idleness (PostgreSQL 14 and later): waiting
for notifications is all it does, and ``idle_session_timeout`` set on the role or the database
would cut it every few seconds, losing what is sent meanwhile."""


CLIENT_CHECK_INTERVAL: Final = "5s"
"""How often the server checks, while a statement of a LISTEN session runs, that the client
is still there (``client_connection_check_interval``, PostgreSQL 14 and later): a session
whose statement was held up (a NOTIFY waiting for its lock) and whose client gave up on it
then ends, rather than staying until the statement completes."""

SESSION_SETTINGS: Final = (
    "SELECT pg_catalog.set_config(name, CASE name WHEN 'idle_session_timeout' THEN '0'"
    f" ELSE '{CLIENT_CHECK_INTERVAL}' END, false) FROM pg_catalog.pg_settings"
    " WHERE name IN ('idle_session_timeout', 'client_connection_check_interval')"
)
""":data:`NEVER_IDLE_OUT`, and :data:`CLIENT_CHECK_INTERVAL` (refused on a server whose
platform cannot check: :data:`NEVER_IDLE_OUT` alone then)."""


async def start_listening(conn: psycopg.AsyncConnection[Any], channels: Iterable[str]) -> None:
    """LISTEN on *channels*, in a session that no ``idle_session_timeout`` ends.

    Its statements end when its client is gone, where the server can tell.
    """
    try:
        await conn.execute(SESSION_SETTINGS)
    except psycopg.errors.InvalidParameterValue:  # no client_connection_check_interval here
        await conn.execute(NEVER_IDLE_OUT)
    for channel in channels:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
