"""Errors met against highly-available PostgreSQL: a standby, several hosts.

A write refused by a standby (``in_hot_standby = on``, reported by PostgreSQL 14 and later)
is temporary while a VIP or a proxy moves to the new primary: retryable, naming the host
reached. A read-only role is not. A connection to several hosts that failed says why for
each.
"""

from __future__ import annotations

from typing import Any

import psycopg

from dispatcher.publish import BrokerUnavailable, PublishError
from dispatcher.publish.broker_errors import all_attempts, broker_failure, broker_unavailable
from dispatcher.publish.refusals import refused_for_good, with_cause

SEVERAL = "host=db1,db2 port=5432,5433 dbname=app user=web"


class Info:
    def __init__(self, standby: str | None) -> None:
        self._standby = standby
        self.host, self.port = "db2", 5433

    def parameter_status(self, name: str) -> str | None:
        return self._standby if name == "in_hot_standby" else None


class Server:
    """What the errors read of a connection: the parameters its server reported."""

    def __init__(self, standby: str | None) -> None:
        self.info = Info(standby)


def refused(what: str = "cannot execute NOTIFY during recovery") -> psycopg.Error:
    return psycopg.errors.ReadOnlySqlTransaction(what)


def failure(standby: str | None, conninfo: str = SEVERAL) -> PublishError:
    server: Any = Server(standby)
    return broker_failure(conninfo, refused(), "send to", "the NOTIFY", server)


def test_a_standby_s_refusal_may_pass_later_naming_the_host_reached() -> None:
    error = failure("on")
    assert isinstance(error, BrokerUnavailable)
    assert "the server reached (db2, port 5433) is a standby" in str(error)
    assert "target_session_attrs=read-write" in str(error)
    assert "will not help" not in str(error)
    assert not refused_for_good(refused(), Server("on"))  # type: ignore[arg-type]


def test_a_read_only_role_s_refusal_is_for_good() -> None:
    error = failure("off")
    assert not isinstance(error, BrokerUnavailable)
    assert "the database or the role is read-only (default_transaction_read_only)" in str(error)
    assert "sending again will not help" in str(error)
    assert refused_for_good(refused(), Server("off"))  # type: ignore[arg-type]


def test_a_server_that_does_not_say_is_taken_at_its_word() -> None:
    error = failure(None, "host=db1 dbname=app")  # (before PostgreSQL 14)
    assert not isinstance(error, BrokerUnavailable)
    assert "(default_transaction_read_only, or a standby)" in str(error)
    assert "target_session_attrs" not in str(error)


def test_the_fix_is_named_only_where_several_hosts_may_land_on_a_standby() -> None:
    chosen = f"{SEVERAL} target_session_attrs=read-write"
    assert "target_session_attrs" not in with_cause(refused(), "x", Server("on"), chosen)  # type: ignore[arg-type]
    assert "target_session_attrs" not in with_cause(refused(), "x", Server("on"), "host=db1")  # type: ignore[arg-type]
    assert "target_session_attrs" in with_cause(refused(), "x", Server("on"), SEVERAL)  # type: ignore[arg-type]


MULTI_HOST_FAILURE = (
    'connection failed: connection to server at "127.0.0.1", port 5572 failed: Connection'
    " refused\n\tIs the server running on that host and accepting TCP/IP connections?\n"
    "Multiple connection attempts failed. All failures were:\n"
    "- host: '127.0.0.1', port: '5571', hostaddr: '127.0.0.1': connection failed: connection"
    ' to server at "127.0.0.1", port 5571 failed: session is read-only\n'
    "- host: '127.0.0.1', port: '5572', hostaddr: '127.0.0.1': connection failed: connection"
    ' to server at "127.0.0.1", port 5572 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?"
)


def test_a_connection_to_several_hosts_says_why_each_failed() -> None:
    exc = psycopg.OperationalError(MULTI_HOST_FAILURE)
    both = (
        'connection to server at "127.0.0.1", port 5571 failed: session is read-only; '
        'connection to server at "127.0.0.1", port 5572 failed: Connection refused'
    )
    assert all_attempts(exc) == both
    conninfo = "host=127.0.0.1,127.0.0.1 port=5571,5572"
    assert str(broker_unavailable(conninfo, exc, "connect to")).endswith(f": {both}")


def test_a_connection_to_one_host_keeps_its_one_line() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5599 failed: Connection'
        " refused\n\tIs the server running on that host and accepting TCP/IP connections?"
    )
    assert all_attempts(exc) is None
    assert str(broker_unavailable("port=5599", exc, "connect to")).endswith(": Connection refused")
