"""Connection details shared by the sync and async senders."""

from __future__ import annotations

import inspect
import os
import select
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg
from psycopg import BaseConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from dispatcher.config import get_settings
from dispatcher.config.forking import at_fork
from dispatcher.publish.errors import AsyncioRequired, BrokerUnavailable, PublishError
from dispatcher.schema import DispatcherError, InvalidArgumentType

if TYPE_CHECKING:
    import asyncio

NOTIFY_MANY: Final = (
    "SELECT pg_catalog.count(pg_catalog.pg_notify(c, p))"
    " FROM ROWS FROM (pg_catalog.unnest(%b::text[]), pg_catalog.unnest(%b::text[])) AS m(c, p)"
)
"""One statement that sends any number of notifications, in order (so, atomically).

The arrays travel in binary format: parsing them as text costs the server ten times more.
"""

NOTIFY_ONE: Final = "SELECT pg_catalog.pg_notify(%s, %s)"
"""One notification: for a single payload, half the cost of :data:`NOTIFY_MANY` on both
sides (no arrays to build, send and unnest)."""

NOTIFY_LINES: Final = (
    "SELECT pg_catalog.count(pg_catalog.pg_notify(c, p)) FROM ROWS FROM ("
    "pg_catalog.unnest(pg_catalog.string_to_array(%s::text, E'\\n')),"
    " pg_catalog.unnest(pg_catalog.string_to_array(%s::text, E'\\n'))) AS m(c, p)"
)
""":data:`NOTIFY_MANY` with the channels and the payloads each as one text, a line apiece.

For payloads without a line break, which every JSON text the SDK writes is (compact, its
control characters escaped): two texts cost both sides a fraction of two arrays of
thousands of elements (about a sixth of the client's time and two thirds of the wall time
for 50,000 messages).
"""

UTF8: Final[dict[str, Any]] = {"client_encoding": "UTF8"}
"""Connect option of every connection the project opens (the SDK's, the services', dispatcherctl's).

Text then travels as UTF-8 whatever the database's encoding, or the conninfo's or
``PGCLIENTENCODING``'s: psycopg reads it as ``str`` (on a ``SQL_ASCII`` database it would
read ``bytes``), and a database in another encoding converts it, refusing the characters it
lacks with an error of its own (:data:`UNTRANSLATABLE`) rather than the client failing to
encode them. A startup parameter: it passes through pgbouncer.
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
    operator's choice wins).
    """
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error:  # connect() says what is wrong with it
        given = {}
    return {**UTF8, **{key: value for key, value in LIVENESS.items() if key not in given}}


UNTRANSLATABLE: Final = ("22P05", "22021")
"""SQLSTATEs of text the database's encoding cannot hold: ``untranslatable_character`` (a
character with no equivalent in that encoding, also a ``\\u`` escape of a ``jsonb`` value)
and ``character_not_in_repertoire``."""

APPLICATION_NAME: Final = "dispatcher-publisher"
"""``application_name`` of the SDK's own connections, unless the conninfo sets one."""

CONNECT_TIMEOUT: Final = 10
"""Seconds a connection attempt may take, unless the conninfo sets ``connect_timeout``."""

CLOSE_WAIT: Final = 5.0
"""Seconds closing an async shared connection waits for the statement running on it to end.

Past that (a long statement), another task of its event loop closes it once it ends.
"""

LOCK_WAIT: Final = 0.05
"""Seconds closing from sync code waits for a lock that the current thread may hold itself.

A signal handler that closes the connections runs in a thread it interrupted, which may be
sending on one (holding the connection's lock) or taking one (holding a provider's lock):
waiting longer would only delay the handler, and waiting for good would deadlock it. Other
threads hold those locks for a moment, or for the statement they run. Past that wait, a
daemon thread does the rest once the lock is free.
"""

_C = TypeVar("_C")
_Conn = TypeVar("_Conn", bound="BaseConnection[Any]")

CALLER_CONNECTION: Final = "the connection passed as connection="
"""How errors name the caller's own connection (never its conninfo: it may hold a password)."""

_inherited: list[object] = []
"""Connections a forked child found open: they belong to the parent, so they are never
closed here (that would end the parent's session); this only keeps them referenced."""


def notify_statement(messages: Sequence[tuple[str, str]]) -> tuple[str, Sequence[Any]]:
    """The statement and parameters that NOTIFY each ``(channel, payload)`` of *messages*.

    One message takes :data:`NOTIFY_ONE`; more take one statement (so delivered in order,
    and all or none): :data:`NOTIFY_LINES` when no channel or payload holds a line break,
    else :data:`NOTIFY_MANY`.
    """
    if len(messages) == 1:
        return NOTIFY_ONE, messages[0]
    channels = [channel for channel, _ in messages]
    payloads = [text for _, text in messages]
    channel_lines, payload_lines = "\n".join(channels), "\n".join(payloads)
    breaks = len(messages) - 1  # one between each two lines, and no other
    if channel_lines.count("\n") == breaks and payload_lines.count("\n") == breaks:
        return NOTIFY_LINES, (channel_lines, payload_lines)
    return NOTIFY_MANY, (channels, payloads)


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
    """
    try:
        brokers = get_settings().brokers
    except DispatcherError:
        return False
    return any(
        section is not None and section.transaction_pooler and section.conninfo == conninfo
        for section in (brokers.pg_notify, brokers.pg_queue)
    )


def connect_options(conninfo: str) -> dict[str, Any]:
    """Keyword arguments for ``connect()``: autocommit, UTF-8, our defaults the conninfo lacks.

    Text is UTF-8 whatever the conninfo says (:data:`UTF8`); a dead peer is noticed
    (:data:`LIVENESS`). No statement is prepared on a
    conninfo the config marks ``transaction_pooler``.
    """
    given = conninfo_to_dict(conninfo)
    options: dict[str, Any] = {"autocommit": True, **connection_options(conninfo)}
    if through_transaction_pooler(conninfo):
        options["prepare_threshold"] = None
    if "application_name" not in given:
        options["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    return options


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


def broker_unavailable(conninfo: str, exc: psycopg.Error, doing: str) -> BrokerUnavailable:
    """Turn a psycopg error into one sentence naming the server, without secrets."""
    reason = _reason(conninfo, exc)
    return BrokerUnavailable(f"cannot {doing} {describe_server(conninfo)}: {reason}")


def stopped_answering(
    conninfo: str, exc: psycopg.Error, doing: str, during: str = "the send", then: str = ""
) -> BrokerUnavailable:
    """The error for a connection lost once a statement may have reached the server.

    Not "cannot connect": the connection was open, and broke (or timed out: see
    :data:`TCP_USER_TIMEOUT`) *during* the statement; *then* says what that means for it
    (whether it took effect is unknown).
    """
    reason = _reason(conninfo, exc)
    after = f"; {then}" if then else ""
    return BrokerUnavailable(
        f"cannot {doing} {describe_server(conninfo)}: the database stopped answering during "
        f"{during} ({reason}){after}"
    )


def closed_while_idle(connection: BaseConnection[Any]) -> bool:
    """Whether the server has ended *connection*, idle (no statement running on it), meanwhile.

    An idle connection's socket has nothing to read, unless the server wrote to it: the
    error of a ``pg_terminate_backend()``, a shutdown or an idle timeout (the server's, a
    pooler's), then the end of the stream; rarely, a notice or a changed parameter (then
    the connection is replaced for nothing). Checked before each NOTIFY, which is never
    sent twice (see :class:`~dispatcher.publish.notify_async.AsyncConnectionProvider`),
    through an :class:`IdleWatch` kept with the connection.
    """
    return IdleWatch(connection).closed()


class IdleWatch:
    """:func:`closed_while_idle` for one connection, prepared once.

    A check then costs one non-blocking ``poll()``, under a microsecond (``poll()`` takes
    any descriptor number, unlike ``select()``, which serves where there is no ``poll()``:
    Windows).
    """

    __slots__ = ("_poll", "connection")

    def __init__(self, connection: BaseConnection[Any]) -> None:
        self.connection = connection
        self._poll: Any = None
        if sys.platform != "win32" and hasattr(select, "poll"):
            try:
                self._poll = select.poll()
                self._poll.register(connection.pgconn.socket, select.POLLIN)
            except (psycopg.Error, OSError, ValueError):  # no socket any more
                self._poll = None

    def closed(self) -> bool:
        """Whether the server has ended the connection while it was idle."""
        connection = self.connection
        if connection.closed:
            return True
        try:
            if self._poll is not None:
                return bool(self._poll.poll(0))
            return bool(select.select([connection.pgconn.socket], [], [], 0)[0])
        except (psycopg.Error, OSError, ValueError):  # no socket any more
            return True


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


class TextNotStorable(PublishError):
    """The database refused a text for a character its encoding lacks (:data:`UNTRANSLATABLE`).

    Raised by the SDK's own connections; the callers that know which values they sent name
    the one at fault instead (:func:`dispatcher.publish.pg_text.unstorable`).
    """

    def __init__(self, message: str, encoding: str | None) -> None:
        super().__init__(message)
        self.encoding = encoding
        """PostgreSQL's name of the database's encoding (``LATIN1``), if known."""


def server_encoding(connection: BaseConnection[Any]) -> str | None:
    """PostgreSQL's name of the encoding of *connection*'s database, if known."""
    try:
        return connection.info.parameter_status("server_encoding")
    except psycopg.Error:  # the connection is broken: its parameters cannot be read
        return None


ROLLED_BACK: Final = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
"""The errors of a statement the server rolled back whole, in a transaction of its own: a
serialization failure (which a role whose ``default_transaction_isolation`` is
``serializable`` meets) or a deadlock. It did nothing (its NOTIFY is not sent either), and
sent again at once it may well pass."""


def rolled_back(conninfo: str, exc: psycopg.Error) -> BrokerUnavailable:
    """The error for a statement the database at *conninfo* rolled back twice (*exc*)."""
    return BrokerUnavailable(
        f"{describe_server(conninfo)} rolled the statement back, twice: "
        f"{_reason(conninfo, exc)} (SQLSTATE {exc.sqlstate}: a serialization failure or a "
        "deadlock; is default_transaction_isolation serializable for the role?): nothing was "
        "stored or sent; sending it again may succeed"
    )


def broker_failure(
    conninfo: str,
    exc: psycopg.Error,
    doing: str,
    what: str,
    connection: BaseConnection[Any] | None = None,
) -> PublishError:
    """The error for *exc*, raised by the database at *conninfo* while *doing* (*what*).

    A :class:`BrokerUnavailable` when sending again later may succeed (a write refused by a
    standby, *connection*'s server, among them: see :func:`refused_for_good`); a plain
    :class:`PublishError` when the database refused *what* (``the NOTIFY``, ``to store the
    jobs``) for a reason no retry cures (:data:`REFUSALS`), saying so; a
    :class:`TextNotStorable` (with the encoding of *connection*'s database) when a text
    held a character the database's encoding lacks.
    """
    if on_standby(exc, connection):
        return BrokerUnavailable(
            f"cannot {doing} {describe_server(conninfo)}: it refused {what}: "
            f"{_reason(conninfo, exc, connection)} (SQLSTATE {exc.sqlstate}: sending again may"
            " succeed, on a new connection, once it leads to the primary)"
        )
    if not isinstance(exc, REFUSALS):
        return broker_unavailable(conninfo, exc, doing)
    message = (
        f"cannot {doing} {describe_server(conninfo)}: it refused {what}: "
        f"{_reason(conninfo, exc, connection)} (SQLSTATE {exc.sqlstate}: sending again will"
        " not help)"
    )
    if exc.sqlstate in UNTRANSLATABLE:
        return TextNotStorable(message, None if connection is None else server_encoding(connection))
    return PublishError(message)


def first_line(exc: BaseException) -> str:
    """The first line of *exc*'s message (its type's name when it has none, or no text)."""
    try:
        text = str(exc)
    except Exception:  # an exception of the application's whose __str__ fails
        text = ""
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def _reason(
    conninfo: str, exc: psycopg.Error, connection: BaseConnection[Any] | None = None
) -> str:
    """*exc*'s message, without libpq's preamble nor the password (see :func:`connect_failure`).

    With the cause of a write refused as read-only (:func:`with_cause`), given the
    *connection* it was refused on.
    """
    reason = connect_failure(exc)
    password = conninfo_to_dict(conninfo).get("password")
    if password:
        reason = reason.replace(str(password), "***")
    return with_cause(exc, reason, connection, conninfo)


_ALL_FAILURES: Final = "Multiple connection attempts failed. All failures were:"
"""What psycopg writes before the failure of each host, when a conninfo names several."""


def connect_failure(exc: BaseException) -> str:
    """One line saying why *exc* happened, without libpq's preamble ("connection failed: ").

    The first line of its message; but when a connection to several hosts failed (a
    multi-host conninfo), the failure of each host, joined with ``; ``: psycopg's first line
    is the last host's only, and the others' may tell more (a standby up, the primary down:
    ``port 5571 failed: session is read-only``, not only ``Connection refused``).
    """
    return all_attempts(exc) or first_line(exc).rsplit("failed: ", 1)[-1]


def all_attempts(exc: BaseException) -> str | None:
    """Why a connection to several hosts failed (*exc*): each host's failure, on one line.

    Joined with ``; ``; ``None`` for another error. Each names its host and port, without
    libpq's preamble ("connection failed: ").
    """
    if not isinstance(exc, psycopg.OperationalError):
        return None
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails
        return None
    if _ALL_FAILURES not in text:
        return None
    attempts = [
        line.split("connection failed: ", 1)[-1]
        for line in text.split(_ALL_FAILURES, 1)[1].splitlines()
        if line.startswith("- ")
    ]
    return "; ".join(attempts) or None


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


_pid = os.getpid()
"""This process's id, kept up to date in forked children: asking costs a system call."""


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


at_fork(after_in_child=_after_fork_in_child)


class Owner:
    """Who may use a connection of the SDK's own: a process, and an event loop for async ones.

    :attr:`key` tells owners apart in a dict; :meth:`same` and :meth:`alive` guard against a
    key reused by a new event loop at the address of a dead one.
    """

    __slots__ = ("_loop", "key", "pid")

    def __init__(self, loop: object | None = None) -> None:
        self.pid = _pid
        self._loop = None if loop is None else weakref.ref(loop)
        self.key: tuple[int, ...] = (self.pid,) if loop is None else (self.pid, id(loop))

    def same(self, other: Owner) -> bool:
        """Whether *other* is this owner (the same process, and the same live loop)."""
        if self.key != other.key:
            return False
        return self._loop is None or (other._loop is not None and self._loop() is other._loop())

    def alive(self) -> bool:
        """Whether its connection may still be used: in this process, by a loop not closed."""
        if self.pid != _pid:
            return False
        if self._loop is None:
            return True
        loop = self._loop()
        return loop is not None and not loop.is_closed()  # type: ignore[attr-defined]


def sync_owner() -> Owner:
    """Who may use a sync connection: the process that opened it (any of its threads)."""
    return Owner()


def async_owner() -> Owner:
    """Who may use an async connection: the process and event loop that opened it.

    :raises AsyncioRequired: when no asyncio event loop runs (trio's, say).
    """
    return Owner(running_loop())


def async_require_loop(*, connects: bool = True) -> None:
    """Check that an asyncio event loop runs, before code that would fail obscurely without.

    *connects*: the code goes on to use psycopg's async connections, which Windows'
    ProactorEventLoop cannot run; ``False`` where nothing connects (an interceptor of
    :mod:`dispatcher.testing` takes the messages): any asyncio loop serves then.

    :raises AsyncioRequired: when none runs (trio's, say), or, if it *connects*, when it is
        Windows' ProactorEventLoop.
    """
    running_loop(connects=connects)


def sync_require_loop(*, connects: bool = True) -> None:
    """The sync twin of :func:`async_require_loop`: nothing to check."""


def async_in_loop() -> bool:
    """Whether an asyncio event loop runs here (async connections may be used)."""
    import asyncio  # only async callers pay for it

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def sync_in_loop() -> bool:
    """The sync twin of :func:`async_in_loop`: sync connections may always be used."""
    return True


def running_loop(*, connects: bool = True) -> asyncio.AbstractEventLoop:
    """The running asyncio event loop (one that async connections can use, if it *connects*).

    :raises AsyncioRequired: when there is none: the caller runs under another event loop
        (trio, curio) or none at all; or, if it *connects*, when it is Windows'
        ProactorEventLoop, on which psycopg's async connections cannot run (a retry would
        not help: it is no :class:`BrokerUnavailable`).
    """
    import asyncio  # only async callers pay for it

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise AsyncioRequired(
            "the async API (asubmit_task, adelay, abatch...) needs a running asyncio event"
            " loop, and none runs here: it supports asyncio only (psycopg's async"
            " connections do). Under trio, call the sync API in a worker thread, e.g."
            " `await trio.to_thread.run_sync(my_task.delay, ...)`"
        ) from None
    if connects and sys.platform == "win32" and isinstance(loop, asyncio.ProactorEventLoop):
        raise AsyncioRequired(PROACTOR_LOOP)
    return loop


PROACTOR_LOOP: Final = (
    "the async API (asubmit_task, adelay, abatch...) cannot run on Windows' default event"
    " loop, the ProactorEventLoop: psycopg's async connections need a selector loop. Run"
    " your code on one: asyncio.run(main(), loop_factory=asyncio.SelectorEventLoop) on"
    " Python 3.12 and later; on 3.11,"
    " asyncio.Runner(loop_factory=asyncio.SelectorEventLoop).run(main())"
)
"""What the async API says, raising :class:`AsyncioRequired`, on a ProactorEventLoop."""


class ThreadInside(threading.local):
    """How deep the calling thread is inside sync providers' sending (or opening) now.

    A signal handler, or a ``__del__`` the cyclic garbage collector runs, executes in the
    thread it interrupted; were that thread inside, holding the locks of the connection it
    sends on (or opens), a submission of the handler waiting for them would wait for ever.
    """

    depth: int = 0


class NeverInside:
    """:class:`ThreadInside` of asyncio code, where no caller re-enters so.

    A signal handler or a ``__del__`` cannot await (it may call the sync API, which has
    connections of its own). Its tasks share the thread: what one of them does says nothing
    of another.
    """

    @property
    def depth(self) -> int:
        """Never inside."""
        return 0

    @depth.setter
    def depth(self, value: int) -> None:
        """Nothing to keep."""


sync_inside: Final = ThreadInside()
"""Marks the threads inside a sync provider's sending (see :class:`ThreadInside`)."""

async_inside: Final = NeverInside()
"""The async twin of :data:`sync_inside`: never inside (see :class:`NeverInside`)."""


def sync_opening_lock() -> threading.Lock:
    """What callers wait on while one of them opens a sync connection."""
    return threading.Lock()


def async_opening_lock() -> asyncio.Lock:
    """What callers of one event loop wait on while one of them opens its connection."""
    import asyncio

    return asyncio.Lock()


_closing: set[Any] = set()
"""Closers still waiting for the statement running on a connection to end (kept referenced)."""


def sync_later(function: Callable[..., object], *args: object) -> None:
    """Run ``function(*args)`` on a daemon thread: what a close that must not wait leaves."""
    threading.Thread(target=function, args=args, name="dispatcher-close", daemon=True).start()


def async_later(function: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
    """Run ``function(*args)`` as a task of the running event loop (kept referenced)."""
    task = running_loop().create_task(function(*args))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def sync_close_when_free(connection: psycopg.Connection[Any]) -> None:
    """Close a shared connection no caller can get any more, once no statement runs on it.

    Closing frees the connection's memory in libpq: under the connection's lock, which every
    statement holds, so that no other thread is using it then. Waits :data:`LOCK_WAIT`
    seconds at most for that lock (the thread calling may hold it: a signal handler's), then
    leaves the closing to a daemon thread, which closes it once the statement ends.
    """
    lock = connection.lock
    if lock.acquire(timeout=LOCK_WAIT):
        try:
            connection.close()
        finally:
            lock.release()
        return

    def close_later() -> None:
        with lock:
            connection.close()

    sync_later(close_later)


async def async_close_when_free(connection: psycopg.AsyncConnection[Any]) -> None:
    """:func:`sync_close_when_free` for an async connection.

    Other tasks of its event loop may be sending on it: closing it under them would close
    the socket they wait on.
    """
    import asyncio

    lock = connection.lock
    try:
        await asyncio.wait_for(lock.acquire(), CLOSE_WAIT)
    except TimeoutError:

        async def close_later() -> None:
            async with lock:
                await connection.close()

        async_later(close_later)
        return
    try:
        await connection.close()
    finally:
        lock.release()


def abandon(connection: Any, owner: Owner) -> None:
    """Let go of a connection whose owner is gone, without using it.

    A forked child must not close its parent's connection (that would end the parent's
    session); the connection of an event loop that was closed is closed at the socket level
    (nothing can use it any more).
    """
    if owner.pid != os.getpid():
        _inherited.append(connection)
    else:
        connection.pgconn.finish()
