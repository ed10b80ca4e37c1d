"""The pg_queue broker's working connections: opened on demand, replaced when they break.

A :class:`QueueDatabase` is one connection, used one statement at a time (each in
autocommit); the broker has two, one for claims and one for renewals, acknowledgements and
sweeps. Whenever one is (re)opened, its session gets a ``statement_timeout`` (and an
``idle_in_transaction_session_timeout``) of :data:`STATEMENT_TIMEOUT`, unless the conninfo,
the role or the database already sets one: a statement stuck behind a lock fails instead of
hanging the broker, and is retried like any other failure (the connection is kept). Its
statements are planned once (generic plans, see :data:`_SESSION`) and never JIT-compiled.
Then *on_open* runs (the broker checks the tables' version and sweeps what dead services
left behind). While the server cannot be reached, attempts to connect are spaced by a
growing delay (0.1 s, doubling up to 30 s), shared by every user of the connection, and
each failure is logged once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
import psycopg

from dispatcher.publish import describe_server
from dispatcher.server.backoff import FIRST_RETRY, MAX_RETRY, Backoff
from dispatcher.server.brokers.base import BrokerNotReady
from dispatcher.server.brokers.pg_notify import open_connection
from dispatcher.server.logsafe import first_line, get_logger
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

Connection = psycopg.AsyncConnection[Any]
Rows = list[tuple[Any, ...]]

STATEMENT_TIMEOUT: Final = 25.0
"""Seconds a statement may run before the server cancels it: a little less than the claim
loop's own limit (30 s), so that the server gives up first and the connection survives."""

BROKEN = (psycopg.OperationalError, psycopg.InterfaceError)
"""Errors after which a connection is not used again..."""
CANCELLED = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)
"""...except these: the server gave up on one statement (``statement_timeout``,
``lock_timeout``) and the connection is as good as before."""

_SESSION: Final = b"""
SELECT set_config(s.name, s.value, false)
FROM (VALUES ('statement_timeout', %(timeout)s),
             ('idle_in_transaction_session_timeout', %(timeout)s),
             ('plan_cache_mode', 'force_generic_plan'),
             ('jit', 'off')) AS s(name, value)
JOIN pg_settings AS p USING (name)
WHERE p.source NOT IN ('client', 'user', 'database', 'database user')
"""
"""The session's settings, unless the conninfo (``options``, ``PGOPTIONS``), the role or
the database sets them (an operator's choice wins): the timeouts, generic plans, no JIT.

Each statement of the broker runs thousands of times, with arrays whose length changes
every time: planning it anew for each run (as PostgreSQL does whenever the custom plans
look cheaper, as they do for a claim) costs a good part of the statement. Every statement
in :mod:`.sql` is written so that its generic plan is the right one.

JIT compilation is off: PostgreSQL decides it from the plan's estimated cost, which for a
claim over a large backlog (the ``LIMIT`` aside) passes ``jit_above_cost``, and then
compiles the statement anew at every run: about 30 ms of CPU for a claim that otherwise
takes well under 1 ms."""

_PREPARED_STATEMENT_LOST: Final = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)
"""What psycopg meets when a pooler in transaction mode hands its statements to a server
session other than the one that prepared them."""

_WARNED_UNPREPARED: set[str] = set()
"""The servers a lost prepared statement was reported for (once each, not per connection)."""

FAILURES = (psycopg.Error, OSError, BrokerNotReady)
"""What a statement can fail with: the database's errors, an unreachable server, tables
that are missing or too old (found when a connection is opened)."""


class QueueDatabase:
    """One autocommit connection, opened when first needed and after each loss.

    *statement_timeout* (seconds) is the session's, unless the conninfo, the role or the
    database sets one. *pooled*: the conninfo leads to a pooler in transaction mode, whose
    sessions are shared with other clients and keep no prepared statement from one
    transaction to the next: nothing is prepared and nothing set on the session. A prepared
    statement found gone turns preparing off from then on, with a warning that names the
    setting (the session settings are still made: only the operator can say whether they
    reach other clients).
    """

    def __init__(
        self,
        conninfo: str,
        application_name: str,
        on_open: Callable[[Connection], Awaitable[None]],
        statement_timeout: float = STATEMENT_TIMEOUT,
        *,
        pooled: bool = False,
        stats: ServiceStats | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._timeout = f"{max(1, round(statement_timeout * 1000))}ms"
        self._application_name = application_name
        self._pooled = pooled
        self._unprepared = pooled
        """Whether its connections prepare nothing: configured so, or found necessary."""
        self._on_open = on_open
        self._stats = stats
        self._conn: Connection | None = None
        self._lock = anyio.Lock()
        self._backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RETRY)
        self._retry_at = 0.0
        self.where = describe_server(conninfo)
        """The server, for log lines (never the password)."""

    async def fetch(self, statement: bytes, params: Mapping[str, Any]) -> Rows:
        """Run *statement*; return its rows (none for a statement that returns none).

        :raises psycopg.Error: as psycopg does (the connection is dropped if it broke).
        :raises OSError: when no connection can be opened.
        :raises BrokerNotReady: when the tables are missing or too old.
        """
        conn = await self._connection()
        try:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            if conn.broken or (isinstance(exc, BROKEN) and not isinstance(exc, CANCELLED)):
                reason = f"lost the connection to {self.where} ({first_line(exc)})"
                await self.discard(reason, conn)
            elif isinstance(exc, psycopg.errors.UndefinedTable):
                await self.discard(None, conn)  # the next connection says which command to run
            elif isinstance(exc, _PREPARED_STATEMENT_LOST) and not self._unprepared:
                self._unprepared = True
                if self.where not in _WARNED_UNPREPARED:
                    _WARNED_UNPREPARED.add(self.where)
                    logger.warning(
                        "a prepared statement was lost on %s (%s): a pooler in transaction "
                        "mode in between? This service's queue connections prepare nothing "
                        "from now on. If so, set brokers.pg_queue.transaction_pooler: true: "
                        "the statement_timeout and other settings they give their sessions "
                        "otherwise reach the pooler's other clients",
                        self.where,
                        first_line(exc),
                    )
                await self.discard(None, conn)
            raise
        except BaseException:  # cancelled mid-statement: the connection's state is unknown
            await self.discard(None, conn)
            raise

    async def ready(self) -> None:
        """Open the connection now if there is none (waiting out a reconnect delay first).

        :raises psycopg.Error, OSError, BrokerNotReady: as :meth:`fetch` does.
        """
        await self._connection()

    @property
    def waiting(self) -> bool:
        """Whether the server failed lately and the next attempt must wait a while."""
        return self._conn is None and self._retry_at > time.monotonic()

    @property
    def failing(self) -> bool:
        """Whether there is no connection, and the last attempt to open one failed."""
        return self._conn is None and self._backoff.attempts > 0

    async def discard(self, reason: str | None = None, conn: Connection | None = None) -> None:
        """Close *conn* (default: the current connection); the next statement opens a new one.

        A statement that failed on a connection already replaced closes only its own, never
        the new one other tasks use.
        """
        if conn is None or conn is self._conn:
            conn, self._conn = self._conn, None
        if conn is not None:
            if reason is not None:
                logger.warning("%s; reconnecting", reason)
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _connection(self) -> Connection:
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            try:
                conn = await open_connection(self._conninfo, self._application_name)
            except (psycopg.Error, OSError) as exc:
                self._failed(exc)
                raise
            try:
                if self._unprepared:
                    conn.prepare_threshold = None
                if not self._pooled:
                    await conn.execute(_SESSION, {"timeout": self._timeout})
                await self._on_open(conn)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await conn.close()
                if isinstance(exc, FAILURES):
                    self._failed(exc)
                raise
            self._backoff.reset()
            self._retry_at = 0.0
            self._conn = conn
            if self._stats is not None:
                self._stats.pg_queue_connects += 1
            return conn

    def _failed(self, exc: BaseException) -> None:
        if self._stats is not None:
            self._stats.pg_queue_connect_failures += 1
            self._stats.pg_queue_last_error = first_line(exc)
            self._stats.pg_queue_last_error_time = time.time()
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        logger.warning(
            "pg_queue connection to %s failed (%s); retrying in %.1f s",
            self.where,
            first_line(exc),
            delay,
        )

    async def close(self) -> None:
        """Close the connection for good (the broker is done)."""
        await self.discard()
