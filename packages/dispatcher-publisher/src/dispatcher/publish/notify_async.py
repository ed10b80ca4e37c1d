"""The pg_notify broker's sends from asyncio code (the source the sync twin is generated from).

NOTIFYs of tasks, on the caller's connection or the SDK's own (see
:mod:`dispatcher.publish.provider_registry_async`), and control commands, collecting their
replies on a ``reply_to`` channel. ``notify_sync.py`` is generated from this file by
``tools/async_to_sync.py``; edit this one and run ``hatch run generate-sync``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from dispatcher.publish.broker_errors import broker_failure, broker_unavailable
from dispatcher.publish.brokers import ReplyCollector, wait_until
from dispatcher.publish.caller_connections import CALLER_CONNECTION, caller_connection, caller_lost
from dispatcher.publish.connection_settings import SERVER_PID, connect_options
from dispatcher.publish.notify_statements import notify_statement
from dispatcher.publish.provider_registry_async import shared_provider
from dispatcher.schema import (
    MAX_NOTIFY_PAYLOAD_BYTES,
    SERVICE_NAME_PREFIX,
    parse_service_name,
    split_message,
)

SERVICES_QUERY = (
    "SELECT application_name FROM pg_catalog.pg_stat_activity"
    " WHERE pg_catalog.starts_with(application_name, %s)"
    " AND datname = pg_catalog.current_database()"
    " ORDER BY 1"
)
"""The ``application_name`` of each service connected to this database, given
:data:`~dispatcher.schema.SERVICE_NAME_PREFIX`; :func:`~dispatcher.schema.parse_service_name`
reads the node id and the digest of the channels in it."""


async def asend(
    conninfo: str | None,
    messages: Sequence[tuple[str, str]],
    connection: object | None,
    whose: str = CALLER_CONNECTION,
) -> None:
    """NOTIFY each ``(channel, payload)`` of *messages*, in order, in one statement.

    With *connection*, the NOTIFYs join its current transaction: delivered when it commits,
    never if it rolls back; errors name it as *whose* it is. Without, the SDK's own
    connection to *conninfo* sends them at once, at most once (see
    :meth:`AsyncConnectionProvider.notify`).

    :raises BrokerUnavailable: when the database cannot be reached; when *connection* is
        closed or its transaction aborted (nothing is sent on it then).
    :raises PublishError: when the database refuses the NOTIFY for good (a missing privilege).
    """
    if connection is not None:
        caller = caller_connection(
            connection, AsyncConnection, "asubmit_task", "submit_task", whose
        )
        try:
            # Never prepared on a caller's connection: it may go through a pooler in
            # transaction mode, which would keep the statement on a session it lends to others.
            await caller.execute(*notify_statement(messages), prepare=False)
        except psycopg.Error as exc:
            lost = caller_lost(caller, exc, "send to", whose)
            if lost is None:
                raise
            raise lost from exc
        return
    assert conninfo is not None, "without a connection, a conninfo is needed"
    await shared_provider(conninfo).notify(messages)


async def acontrol_with_reply(
    conninfo: str,
    channel: str,
    text: str,
    reply_to: str,
    replies: ReplyCollector,
    *,
    expected_replies: int | None,
    timeout: float,
) -> None:
    """NOTIFY the control message *text* on *channel* and collect replies on *reply_to*.

    Without *expected_replies*, the services connected to the database and listening on
    *channel* are looked up first (each names its LISTEN connection after its node id and
    its channels) and waited for; those whose names cannot tell whether they listen there
    (they listen on many channels) are waited for too, but not for long (see
    :func:`~dispatcher.publish.brokers.wait_until`).

    :raises BrokerUnavailable: when the database cannot be reached, or the connection is lost.
    :raises PublishError: when the database refuses the command for good (a missing privilege).
    """
    try:
        async with await _connect(conninfo) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(reply_to)))
            row = await (await conn.execute(SERVER_PID)).fetchone()
            replies.through_pooler = row is not None and row[0] != conn.info.backend_pid
            if expected_replies is None:
                cursor = await conn.execute(SERVICES_QUERY, (SERVICE_NAME_PREFIX,))
                services = [parse_service_name(str(name)) for (name,) in await cursor.fetchall()]
                listening = [s for s in services if s is not None and s.may_listen_on(channel)]
                replies.expected_nodes = [s.node_id for s in listening if s.tells_channels]
                replies.uncertain_nodes = [s.node_id for s in listening if not s.tells_channels]
                replies.unlisted_nodes = [s.node_id for s in listening if s.channels_digest is None]
                replies.expected = len(replies.expected_nodes)
            else:
                replies.expected = expected_replies
            payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
            await conn.execute(*notify_statement([(channel, payload) for payload in payloads]))
            sent = time.monotonic()
            deadline = sent + timeout
            while not replies.settled:
                now = time.monotonic()
                deadline = wait_until(replies, sent, deadline, now)
                remaining = deadline - now
                if remaining <= 0:
                    break
                async for notify in conn.notifies(timeout=remaining, stop_after=1):
                    if notify.channel == reply_to:
                        replies.add(notify.payload)  # which joins chunked replies, or says why not
    except psycopg.Error as exc:
        raise broker_failure(conninfo, exc, "send to", "the control command") from None


async def _connect(conninfo: str) -> AsyncConnection[Any]:
    options = connect_options(conninfo) | {"application_name": "dispatcher-control"}
    try:
        return await AsyncConnection.connect(conninfo, **options)
    except psycopg.Error as exc:
        raise broker_unavailable(conninfo, exc, "connect to") from None
