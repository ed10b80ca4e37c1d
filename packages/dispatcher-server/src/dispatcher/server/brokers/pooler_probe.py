"""Whether notifications reach a LISTENing connection that goes through a pooler.

A pooler in transaction mode (pgbouncer's ``pool_mode = transaction``) lends the server
session a LISTEN was made on to other clients between statements, and drops what arrives
while no client has it: every notification is lost, without an error. A listener that finds
a pooler in between (the process id the server gave at connection is not the server
session's: pgbouncer gives its own) sends a probe from another connection and waits for it;
one that does not come back fails the connection with :class:`NotificationsLost`, which the
listeners' retry loops log. Direct connections cost one round trip, and no probe.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import anyio
import psycopg
from psycopg import sql

from dispatcher.publish import describe_server
from dispatcher.server.brokers.pg_connections import open_connection
from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.listener")

PROBE_APPLICATION_NAME: Final = "dispatcher-probe"
"""``application_name`` of the probe's connection (not the service's: control clients count
the services by theirs)."""


class NotificationsLost(ConnectionError):
    """A notification sent to the LISTENing connection's channel did not reach it."""


def probe_channel() -> str:
    """A channel of its own for a listener's probes (listened to once per connection)."""
    return f"dispatcher_probe_{uuid.uuid4().hex[:16]}"


async def behind_a_pooler(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether a pooler stands between *conn* and its server session.

    PostgreSQL tells a client its process id at connection; a pooler tells its own, which is
    not the one ``pg_backend_pid()`` reads on the server session.
    """
    row = await (await conn.execute("SELECT pg_catalog.pg_backend_pid()")).fetchone()
    return row is not None and int(row[0]) != conn.info.backend_pid


async def check_notifications_arrive(
    conn: psycopg.AsyncConnection[Any],
    conninfo: str,
    channel: str,
    timeout: float,
    remedy: str,
) -> None:
    """Raise :class:`NotificationsLost` unless a NOTIFY on *channel* reaches *conn*.

    Only through a pooler (see :func:`behind_a_pooler`); *conn* LISTENs on *channel* first,
    on nothing else yet (what this reads is its probe). The probe is sent from a connection of
    its own to *conninfo*; one that cannot be sent within *timeout* (a pool with no server
    session free) proves nothing and is let go, saying so at DEBUG. *remedy* ends the error
    (``point brokers.pg_notify.conninfo at ...``); the whole is short enough for a log line's
    value (the listeners log it as their connection's failure, which names the server).
    """
    if not await behind_a_pooler(conn):
        return
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    token = uuid.uuid4().hex
    with anyio.move_on_after(timeout) as sending:
        async with await open_connection(conninfo, PROBE_APPLICATION_NAME) as probe:
            await probe.execute("SELECT pg_catalog.pg_notify(%s, %s)", (channel, token))
    if sending.cancelled_caught:
        logger.debug("the probe of %s could not be sent: not checked", describe_server(conninfo))
        return
    with anyio.move_on_after(timeout):
        async for notify in conn.notifies(timeout=timeout):
            if notify.channel == channel and notify.payload == token:
                return
    raise NotificationsLost(
        f"notifications do not arrive (a probe did not come back within {timeout:g} s): a "
        f"pooler in transaction mode? LISTEN needs a session of its own: {remedy}"
    )


async def lent_to_others(
    conn: psycopg.AsyncConnection[Any], conninfo: str, channel: str, timeout: float
) -> bool:
    """Whether *conn* goes through a pooler in transaction mode (its session lent to others).

    Found as :func:`check_notifications_arrive` finds lost notifications (a probe on
    *channel*, which *conn* LISTENs on then); ``False`` on a direct connection, and through a
    pooler in session mode, whose server session stays its client's until it disconnects.
    """
    try:
        await check_notifications_arrive(conn, conninfo, channel, timeout, "")
    except NotificationsLost:
        return True
    return False
