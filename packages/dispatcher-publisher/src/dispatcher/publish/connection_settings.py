"""The ``connect()`` options of the project's connections: UTF-8, TCP liveness, defaults.

Also which conninfo the SDK publishes to, and whether the config marks a conninfo as
leading to a transaction-mode pooler (no prepared statements then).
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dispatcher.config import get_settings
from dispatcher.config.current import in_force
from dispatcher.publish.errors import PublishError

UTF8: Final[dict[str, Any]] = {"client_encoding": "UTF8"}
"""Connect option of every connection the project opens (the SDK's, the services', dispatcherctl's).

Text then travels as UTF-8 whatever the database's encoding, or the conninfo's or
``PGCLIENTENCODING``'s: psycopg reads it as ``str`` (on a ``SQL_ASCII`` database it would
read ``bytes``), and a database in another encoding converts it, refusing the characters it
lacks with an error of its own (:data:`~dispatcher.publish.broker_errors.UNTRANSLATABLE`)
rather than the client failing to encode them. A startup parameter: it passes through
pgbouncer.
"""

TCP_USER_TIMEOUT: Final = 20_000
"""Milliseconds data sent on a connection may stay unacknowledged by the server's host before
the connection is given up (libpq's ``tcp_user_timeout``).

A bound on a dead peer only (a silent network partition, a host gone): a slow statement
does not trip it, since the server's host acknowledges the statement at once, and its own
keepalive probes while the statement runs. Without it, a statement sent into a partition
waits for the kernel's retransmissions to give up: about 16 minutes.
"""

LIVENESS: Final[dict[str, Any]] = {
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": TCP_USER_TIMEOUT,
}
"""TCP settings of every connection the project opens, unless its conninfo sets them.

Keepalive probes after 15 s without traffic keep a firewall or NAT from dropping an idle
connection, and notice a server gone silent while waiting for a reply (within about 20 s:
:data:`TCP_USER_TIMEOUT` ends the probing too); :data:`TCP_USER_TIMEOUT` bounds a send to a
dead peer. Client-side settings (nothing is sent to the server: they pass any pooler); no
effect on a Unix-domain socket.
"""


def connection_options(conninfo: str) -> dict[str, Any]:
    """``connect()`` keyword arguments every connection to *conninfo* the project opens takes.

    :data:`UTF8`, and :data:`LIVENESS` but for the settings *conninfo* makes itself (an
    operator's choice wins). No statement is prepared on a conninfo the config in force marks
    ``transaction_pooler`` (:func:`through_transaction_pooler`): the SDK's connections, the
    services' and ``dispatcherctl``'s alike, lest one leave a prepared statement on a server
    session the pooler then lends to another client (whose psycopg names its own the same:
    ``prepared statement "_pg3_0" already exists``).
    """
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error:  # connect() says what is wrong with it
        given = {}
    options = {**UTF8, **{key: value for key, value in LIVENESS.items() if key not in given}}
    if through_transaction_pooler(conninfo):
        options["prepare_threshold"] = None
    return options


SERVER_PID: Final = "SELECT pg_catalog.pg_backend_pid()"
"""The server process id of a connection's session. Other than the one given at connection,
it means a pooler in between (pgbouncer gives its own): the SDK's connections then prepare
no statement, whatever the config says (a pooler in transaction mode hands a prepared
statement's name, ``_pg3_0``, to another client's session, or loses it: ``prepared statement
"_pg3_0" already exists``, ``does not exist``, or another client's statement run instead),
and a control command's replies, missing, may have been lost there."""

APPLICATION_NAME: Final = "dispatcher-publisher"
"""``application_name`` of the SDK's own connections, unless the conninfo sets one."""

CONNECT_TIMEOUT: Final = 10
"""Seconds a connection attempt may take, unless the conninfo sets ``connect_timeout``."""


def publisher_conninfo() -> str:
    """Return the conninfo of ``brokers.pg_notify`` in the config in force.

    :raises PublishError: when the config has no pg_notify broker.
    """
    settings = get_settings()
    if settings.brokers.pg_notify is None:
        raise PublishError(
            f"cannot submit tasks: {settings.source} configures no brokers.pg_notify "
            "(its conninfo is needed), and no connection= was passed"
        )
    return settings.brokers.pg_notify.conninfo


def through_transaction_pooler(conninfo: str) -> bool:
    """Whether the config in force marks *conninfo* as leading to a transaction-mode pooler.

    That is ``brokers.pg_notify.transaction_pooler`` or ``brokers.pg_queue.transaction_pooler``
    set for a section with that conninfo. Such a pooler loses prepared statements between
    transactions, or hands the name of one (psycopg's ``_pg3_0``) to another client's server
    session.

    Only a config already in force counts: none is loaded here (a service, which has its
    own, would read one from the working directory, or from the environment).
    """
    settings = in_force()
    if settings is None:
        return False
    brokers = settings.brokers
    return any(
        section is not None and section.transaction_pooler and section.conninfo == conninfo
        for section in (brokers.pg_notify, brokers.pg_queue)
    )


def connect_options(conninfo: str) -> dict[str, Any]:
    """Keyword arguments for ``connect()``: autocommit, UTF-8, our defaults the conninfo lacks.

    Text is UTF-8 whatever the conninfo says (:data:`UTF8`); a dead peer is noticed
    (:data:`LIVENESS`); none is prepared through a transaction pooler (see
    :func:`connection_options`).
    """
    given = conninfo_to_dict(conninfo)
    options: dict[str, Any] = {"autocommit": True, **connection_options(conninfo)}
    if "application_name" not in given:
        options["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    return options
