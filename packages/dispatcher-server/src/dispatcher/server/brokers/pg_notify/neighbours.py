"""Another service listening on this one's channels, found as the listener first connects.

pg_notify delivers a NOTIFY to every session listening on its channel: two services on the
same channels both run each task sent there. A channel shared on purpose (every host's
service listens on a broadcast channel beside a channel of its own, as AWX's do) leaves the
services' channel lists different; the very same list is mostly a service started twice (a
second terminal, a unit left running, a copy of the config): the service that starts
second says so, naming the other, once. The others are found as control clients find them,
by the ``application_name`` of their listening connections (see
:func:`~dispatcher.schema.service_application_name`), whose digest of the channels is the
same for the same channels; a service whose name cannot tell its channels (too many of
them, or an older version's name) is not named, nor is a dispatcherd service (its
connections bear no name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg

from dispatcher.schema import SERVICE_NAME_PREFIX, channels_digest, parse_service_name
from dispatcher.server.cancelling import execute_within
from dispatcher.server.log_arguments import Phrase, named_list
from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.listener")

OTHER_SERVICES_QUERY: Final = (
    "SELECT application_name FROM pg_catalog.pg_stat_activity"
    " WHERE pg_catalog.starts_with(application_name, %s)"
    " AND datname = pg_catalog.current_database()"
    " AND pid <> pg_catalog.pg_backend_pid()"
    " ORDER BY 1"
)
"""The ``application_name`` of each other service's connection to this database."""


async def others_on(
    conn: psycopg.AsyncConnection[Any], channels: Sequence[str], timeout: float
) -> dict[str, list[str]]:
    """The other services that listen on the same *channels*: node id -> those channels.

    Looked up on *conn*, within *timeout* seconds; a look-up the server refuses or cuts
    finds none (it only serves a warning). A service that shares only some of them (a
    broadcast channel beside its own) is not one of them.

    :raises psycopg.Error: when *conn* broke meanwhile (the listener connects again).
    """
    try:
        rows = await execute_within(conn, OTHER_SERVICES_QUERY, (SERVICE_NAME_PREFIX,), timeout)
    except psycopg.Error:
        if conn.broken or conn.closed:
            raise
        return {}
    ours = channels_digest(channels)
    found: dict[str, list[str]] = {}
    for (name,) in rows:
        service = parse_service_name(str(name))
        if service is None or service.channels_digest != ours or not service.tells_channels:
            continue
        found.setdefault(service.node_id, list(channels))
    return found


def warn_of_others(others: dict[str, list[str]]) -> None:
    """Say, once per other service, that each task on the channels it shares runs twice."""
    for node_id, shared in others.items():
        logger.warning(
            "the service %s also listens on %s: each task sent there runs on both (pg_notify "
            "delivers it to every listener); stop one of them if this is a service started "
            "twice",
            Phrase("%r", node_id),
            named_list(shared),
        )
