"""The errors of the SDK's connections and statements: one sentence naming the server.

Never a secret (the password is masked); a refusal for good told from a failure that a
retry may cure.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import BaseConnection
from psycopg.conninfo import conninfo_to_dict

from dispatcher.publish.errors import BrokerUnavailable, PublishError
from dispatcher.publish.refusals import REFUSALS, on_standby, with_cause
from dispatcher.publish.server_description import describe_server

UNTRANSLATABLE: Final = ("22P05", "22021")
"""SQLSTATEs of text the database's encoding cannot hold: ``untranslatable_character`` (a
character with no equivalent in that encoding, also a ``\\u`` escape of a ``jsonb`` value)
and ``character_not_in_repertoire``."""


def broker_unavailable(conninfo: str, exc: psycopg.Error, doing: str) -> BrokerUnavailable:
    """Turn a psycopg error into one sentence naming the server, without secrets."""
    reason = _reason(conninfo, exc)
    return BrokerUnavailable(f"cannot {doing} {describe_server(conninfo)}: {reason}")


def stopped_answering(
    conninfo: str, exc: psycopg.Error, doing: str, during: str = "the send", then: str = ""
) -> BrokerUnavailable:
    """The error for a connection lost once a statement may have reached the server.

    Not "cannot connect": the connection was open, and broke (or timed out: see
    :data:`~dispatcher.publish.connection_settings.TCP_USER_TIMEOUT`) *during* the statement;
    *then* says what that means for it (whether it took effect is unknown).
    """
    reason = _reason(conninfo, exc)
    after = f"; {then}" if then else ""
    return BrokerUnavailable(
        f"cannot {doing} {describe_server(conninfo)}: the database stopped answering during "
        f"{during} ({reason}){after}"
    )


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
    standby, *connection*'s server, among them: see
    :func:`~dispatcher.publish.refusals.refused_for_good`); a plain :class:`PublishError`
    when the database refused *what* (``the NOTIFY``, ``to store the jobs``) for a reason no
    retry cures (:data:`~dispatcher.publish.refusals.REFUSALS`), saying so; a
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

    With the cause of a write refused as read-only
    (:func:`~dispatcher.publish.refusals.with_cause`), given the *connection* it was refused on.
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
