"""The pg_queue broker's working connections: opened on demand, replaced when they break.

A :class:`QueueDatabase` is one connection, used one statement at a time (each in
autocommit); the broker has two, one for claims and one for renewals, acknowledgements and
sweeps. Whenever one is (re)opened, its session gets a ``statement_timeout`` (and an
``idle_in_transaction_session_timeout``) of :data:`STATEMENT_TIMEOUT`, unless the conninfo,
the role or the database already sets one: a statement stuck behind a lock fails instead of
hanging the broker, and is retried like any other failure (the connection is kept). Its
statements are planned once (generic plans, see :data:`_SESSION`) and never JIT-compiled.
Whatever the role or the database say, the session is never ended for idleness
(``idle_session_timeout``: these connections wait between statements by design) and runs
its statements in ``read committed`` (the isolation they are written for). Then *on_open*
runs (the broker checks the tables' version and sweeps what dead services left behind).
While the server cannot be reached, attempts to connect are spaced by a growing delay (0.1
s, doubling up to 5 s), shared by every user of the connection, and each failure is
logged once. So are the statements after a write the server refused as read-only (a
standby, or ``default_transaction_read_only`` on the role or the database): the connection
is replaced, after that delay. An attempt that fails for the cause the last line gave is
logged at DEBUG only, and again at WARNING a minute later (with the count of those held
back): a fleet near ``max_connections`` once logged a line per attempt and connection.

A statement the server rolled back for a serialization failure or a deadlock is sent again
(at most :data:`RETRIES` times), on the same connection: it did nothing, and the connection
is as good as before. A connection the server ended while it was idle (an operator's
``pg_terminate_backend()``, a pooler) is replaced before a statement is sent on it; the log
line names the reason the server gave, if it gave one (at most one such line a minute for
each connection, the others counted: a pooler's idle timeout may end them over and over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
import psycopg
from psycopg.pq import TransactionStatus

from dispatcher.publish import describe_server
from dispatcher.publish.broker_errors import all_attempts
from dispatcher.publish.idle_check import IdleWatch
from dispatcher.publish.refusals import note_server, with_cause
from dispatcher.server.backoff import FIRST_RETRY, MAX_RECONNECT, Backoff
from dispatcher.server.brokers.base import BrokerNotReady
from dispatcher.server.brokers.pg_connections import open_connection
from dispatcher.server.brokers.pooler_probe import lent_to_others, probe_channel
from dispatcher.server.cancelling import execute_within
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.ratelimit import FailureLog, RateLimitedLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.pg_queue")

Connection = psycopg.AsyncConnection[Any]
Rows = list[tuple[Any, ...]]

STATEMENT_TIMEOUT: Final = 25.0
"""Seconds a statement may run before the server cancels it: a little less than the claim
loop's own limit (30 s), so that the server gives up first and the connection survives."""

BROKEN = (psycopg.OperationalError, psycopg.InterfaceError)
"""Errors after which a connection is not used again..."""
RETRIED = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
"""...except these, after which the statement is sent again (:data:`RETRIES` times at most):
the server rolled it back, and it may well pass the next time (a statement running alone
cannot have committed);"""
CANCELLED = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable, *RETRIED)
"""...and these: the server gave up on one statement (``statement_timeout``,
``lock_timeout``, or a serialization failure or deadlock sent too often) and the connection
is as good as before."""
RETRIES: Final = 3
"""Times a statement rolled back for a serialization failure or a deadlock is sent again."""
IDLE_END_LINES_WINDOW: Final = 60.0
"""Seconds in which one line at most (for each connection) says that the server ended it
while it was idle; the others are counted, and the count is logged once they are over."""

_SESSION: Final = b"""
SELECT pg_catalog.set_config(s.name, s.value, false)
FROM (VALUES ('statement_timeout', %(timeout)s, false),
             ('idle_in_transaction_session_timeout', %(timeout)s, false),
             ('plan_cache_mode', 'force_generic_plan', false),
             ('enable_seqscan', 'off', false),
             ('jit', 'off', false),
             ('lock_timeout', %(lock_timeout)s, false),
             ('idle_session_timeout', '0', true),
             ('default_transaction_isolation', 'read committed', true),
             ('search_path', 'pg_catalog, pg_temp', true)) AS s(name, value, always)
JOIN pg_catalog.pg_settings AS p USING (name)
WHERE s.value IS NOT NULL
  AND (s.always OR p.source NOT IN ('client', 'user', 'database', 'database user'))
"""
"""The session's settings, unless the conninfo (``options``, ``PGOPTIONS``), the role or
the database sets them (an operator's choice wins): the timeouts, generic plans, no
sequential scans, no JIT.

Two are set whatever the operator chose, as the LISTEN session does for the first (see
``pg_connections.NEVER_IDLE_OUT``): ``idle_session_timeout`` off (PostgreSQL 14 and later; set on
the role, it ended these connections between two statements: each came back with an error,
and a new connection), and ``default_transaction_isolation`` read committed (the statements
are written for it: under ``serializable`` they fail with serialization errors, which a
claim in read committed never meets). Through a pooler in transaction mode nothing is set
(see :class:`QueueDatabase`): set them on the services' role.

A third is set whatever the operator chose: ``search_path`` is ``pg_catalog, pg_temp``. No
statement needs another (each names its tables with their schema, and each built-in
function as ``pg_catalog.<name>``, so that none resolves through a schema another role may
create in, pooler or not); this makes sure of the operators as well (``=``, ``||``): a
schema of the role's ``search_path`` that another role may create in (``public`` before
PostgreSQL 15, one named like the role) could otherwise hold an operator with concrete
types that beats a built-in one, and runs as this role. See security.md.

Each statement of the broker runs thousands of times, with arrays whose length changes
every time: planning it anew for each run (as PostgreSQL does whenever the custom plans
look cheaper, as they do for a claim) costs a good part of the statement. A generic plan
is kept until the table's statistics change (a VACUUM, an ANALYZE), however much the table
grows meanwhile, and a VACUUM of the drained table leaves statistics that say it is empty
until the next ANALYZE. Every statement in :mod:`.sql` reads the ``jobs`` rows it needs
through an index (by id, or by the index that hands them over in order), so that it reads
about the rows it changes whatever the estimates. But to a plan made while the table was
empty, or while its statistics said so, a sequential scan costs nothing: it was chosen, and
each claim read the whole backlog, seconds per claim. Sequential scans are therefore off
(``enable_seqscan``: a planner preference, not a ban; a table that no index serves is still
read in full).

``lock_timeout`` is set on the working connection only (none on the claiming one, whose
claims skip locked rows): a row another session holds locked (``SELECT ... FOR UPDATE``)
stops an outcome's write for that long at most, not for the ``statement_timeout``, and the
renewals of leases that share the connection do not wait behind it (see :mod:`.acks`). The
renewal's second try of the rows it found locked sets a shorter one for itself alone (see
``sql_outcomes.RENEW_WAITING``), pooler or not.

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

_WARNED_POOLED: set[str] = set()
"""The servers found behind a pooler in transaction mode (said once each)."""

PROBE_TIMEOUT: Final = 2.0
"""Seconds the probe of a connection found behind a pooler has to come back."""

FAILURES = (psycopg.Error, OSError, BrokerNotReady)
"""What a statement can fail with: the database's errors, an unreachable server, tables
that are missing or too old (found when a connection is opened)."""


class Reconnecting(ConnectionError):
    """No connection, and the next attempt to open one is not due yet: the last one failed."""


class QueueDatabase:
    """One autocommit connection, opened when first needed and after each loss.

    *statement_timeout* (seconds) is the session's, unless the conninfo, the role or the
    database sets one; so is *lock_timeout* (seconds; ``None``: the server's). *pooled*:
    the conninfo leads to a pooler in transaction mode, whose sessions are shared with
    other clients and keep no prepared statement from one transaction to the next: nothing
    is prepared and nothing set on the session. So it is when a connection is found to go
    through such a pooler though *pooled* is false (see :func:`lent_to_others`), with a
    warning that names the setting. A prepared statement found gone turns preparing off from
    then on, with a warning that names the setting.
    """

    def __init__(
        self,
        conninfo: str,
        application_name: str,
        on_open: Callable[[Connection], Awaitable[None]],
        statement_timeout: float = STATEMENT_TIMEOUT,
        *,
        lock_timeout: float | None = None,
        pooled: bool = False,
        stats: ServiceStats | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._timeout = f"{max(1, round(statement_timeout * 1000))}ms"
        self._lock_timeout = (
            None if lock_timeout is None else f"{max(1, round(lock_timeout * 1000))}ms"
        )
        self._application_name = application_name
        self._pooled = pooled
        self._unprepared = pooled
        """Whether its connections prepare nothing: configured so, or found necessary."""
        self._probe_channel = probe_channel()
        """Where a connection found behind a pooler is probed (see :func:`lent_to_others`)."""
        self._on_open = on_open
        self._stats = stats
        self._conn: Connection | None = None
        self._idle_ends = RateLimitedLog(logger, logging.INFO, 1, window=IDLE_END_LINES_WINDOW)
        """Says that the server ended the connection while idle (see :meth:`_ended_while_idle`)."""
        self._watch: IdleWatch | None = None
        """Tells whether the server ended the connection while it was idle."""
        self._lock = anyio.Lock()
        self._backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RECONNECT)
        self._failure_lines = FailureLog(logger)
        """Says why attempts fail: once per cause (a minute apart while it lasts)."""
        self._retry_at = 0.0
        self._read_only = False
        """The last statement was a write refused as read-only, and none has passed since:
        the delays before the next connections keep growing though each opens."""
        self.where = describe_server(conninfo)
        """The server, for log lines (never the password)."""
        self._failing: tuple[float, float] | None = None
        """Since the last connection opened, when (``time.monotonic()``) the first attempt
        that failed for want of a connection began, and when the last one ended."""
        self._failing_why = ""
        """What made the last of those attempts fail."""
        self.last_error: str | None = None
        """Why the last attempt to connect failed (``None``: none failed yet)."""
        self.outage = 0.0
        """Seconds without a connection before the last one opened, its attempts failing:
        from the start of the first attempt that failed to the start of the one that
        opened it (the wait between them counts: the others may have been cut off as long);
        ``0.0`` when none failed (the first connection; one that the server ended while
        idle, replaced before use)."""
        self.outage_cause = ""
        """What made the last attempt of that outage fail, in a few words (``it could not
        be reached``, ``it refused writes as read-only``...): the database may have been
        reachable, and refused the work."""

    async def fetch(
        self,
        statement: bytes,
        params: Mapping[str, Any],
        *,
        unless: Callable[[], bool] | None = None,
        cancel_safely: bool = False,
    ) -> Rows:
        """Run *statement*; return its rows (none for a statement that returns none).

        Not when *unless* (asked once the connection is open, the one that runs the
        statement: opening it may have changed the answer) says so: no rows then.

        *cancel_safely*: the caller may give up on the statement (a time limit of its own):
        the server is then asked to cancel it before its connection is closed, lest its
        session stay there, waiting for what held the statement up (a commit waiting for a
        synchronous standby is bounded by no ``statement_timeout``). See
        :mod:`dispatcher.server.cancelling`.

        :raises psycopg.Error: as psycopg does (the connection is dropped if it broke).
        :raises OSError: when no connection can be opened.
        :raises BrokerNotReady: when the tables are missing or too old.
        """
        ended = False
        for retry in range(RETRIES + 1):
            try:
                return await self._run(statement, params, unless, cancel_safely)
            except RETRIED:
                if retry == RETRIES:
                    raise
            except psycopg.errors.IdleSessionTimeout:
                # The server ended the session while it waited for this statement, which it
                # never read (a pooler's, or ours through one): sent again on a new one.
                if ended:
                    raise
                ended = True
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(
        self,
        statement: bytes,
        params: Mapping[str, Any],
        unless: Callable[[], bool] | None,
        cancel_safely: bool = False,
    ) -> Rows:
        """:meth:`fetch`, once."""
        conn = await self._connection()
        if unless is not None and unless():
            return []
        sent = time.monotonic()
        try:
            if cancel_safely:
                rows = await execute_within(conn, statement, dict(params))
            else:
                cursor = await conn.execute(statement, params)
                rows = await cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.IdleSessionTimeout):
                self._ended_while_idle(_reason(exc.diag))
                await self.discard(None, conn)
            elif conn.broken or (isinstance(exc, BROKEN) and not isinstance(exc, CANCELLED)):
                self._failed_since(sent, "the connection was lost")
                reason = f"lost the connection to {self.where} ({first_line(exc)})"
                await self.discard(reason, conn)
            elif isinstance(exc, psycopg.errors.UndefinedTable):
                await self.discard(None, conn)  # the next connection says which command to run
            elif isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
                # A standby, or a read-only role or database: every write fails until an
                # operator mends it. Waited out as an unreachable server is (a new
                # connection may reach the primary after a failover), not tried at once.
                self._read_only = True
                note_server(exc, conn, self._conninfo)  # (a standby, or a read-only role)
                self._failed_since(sent, "it refused writes as read-only")
                self._failed(exc)
                await self.discard(None, conn)
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
            self._failed_since(sent, "a statement was given up, not answered in time")
            await self.discard(None, conn)
            raise
        if self._read_only:
            self._read_only = False
            self._backoff.reset()
            self._failure_lines.ended()
        return rows

    def _ended_while_idle(self, reason: str | None) -> None:
        """Say that the server ended the idle connection, for *reason* (``None``: not known).

        At INFO, one line a minute at most; the others at DEBUG, and their count at INFO.
        """
        # The reason first: a count of lines held back quotes the start of the last one.
        if reason is None:
            message = (
                "a connection was ended while idle (an idle timeout of the server's, a "
                "pooler's or a firewall's?); reconnecting to %s"
            )
            args: tuple[str, ...] = (self.where,)
        else:
            message = "a connection was ended while idle by the server: %s; reconnecting to %s"
            args = (reason, self.where)
        if not self._idle_ends.log(message, *args):
            logger.debug(message, *args)

    def _failed_since(self, began: float, why: str) -> None:
        """An attempt that began at *began* (``time.monotonic()``) failed: no connection.

        The database could not be used from then until now, at least: *why*.
        """
        now = time.monotonic()
        self._failing = (began if self._failing is None else self._failing[0], now)
        self._failing_why = why

    async def ready(self, *, wait: bool = True) -> None:
        """Open the connection now if there is none (waiting out a reconnect delay first).

        Without *wait*, the delay is not waited out (nor the connection's lock held
        meanwhile, which its other users would wait for): :class:`Reconnecting` instead.

        :raises psycopg.Error, OSError, BrokerNotReady: as :meth:`fetch` does.
        """
        await self._connection(wait)

    @property
    def waiting(self) -> bool:
        """Whether the server failed lately and the next attempt must wait a while."""
        return self._conn is None and self._retry_at > time.monotonic()

    @property
    def reconnect_in(self) -> float:
        """Seconds before the next attempt to connect: ``0.0`` when connected or due now."""
        if self._conn is not None:
            return 0.0
        return max(0.0, self._retry_at - time.monotonic())

    @property
    def connected(self) -> bool:
        """Whether a connection is open (as far as is known: it may have broken unseen)."""
        return self._conn is not None and not self._conn.closed

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
            conn, self._conn, self._watch = self._conn, None, None
        if conn is not None:
            if reason is not None:
                logger.warning("%s; reconnecting", reason)
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _connection(self, wait: bool = True) -> Connection:
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                # Only while no statement runs on it: a reply on its way is no sign.
                idle = conn.info.transaction_status == TransactionStatus.IDLE
                if not idle or self._watch is None or not self._watch.closed():
                    return conn
                # The server ended it while it was idle (the error it sent is unread): a new
                # one, before a statement is sent on it and fails.
                self._ended_while_idle(_farewell(conn))
                await self.discard(None, conn)
            delay = self._retry_at - time.monotonic()
            if delay > 0 and not wait:
                raise Reconnecting(self.last_error or "the last attempt to connect failed")
            if delay > 0:
                await anyio.sleep(delay)
            began = time.monotonic()
            try:
                conn = await open_connection(self._conninfo, self._application_name)
            except (psycopg.Error, OSError) as exc:
                self._failed_since(began, "it could not be reached")
                self._failed(exc)
                raise
            try:
                if not self._pooled and await lent_to_others(
                    conn, self._conninfo, self._probe_channel, PROBE_TIMEOUT
                ):
                    self._found_pooled()
                if self._unprepared:
                    conn.prepare_threshold = None
                if not self._pooled:
                    await conn.execute(
                        _SESSION, {"timeout": self._timeout, "lock_timeout": self._lock_timeout}
                    )
                failing = self._failing
                self.outage = 0.0 if failing is None else began - failing[0]
                self.outage_cause = "" if failing is None else self._failing_why
                await self._on_open(conn)
            except BaseException as exc:
                note_server(exc, conn, self._conninfo)  # (a standby, or a read-only role)
                with anyio.CancelScope(shield=True):
                    await conn.close()
                if isinstance(exc, FAILURES):
                    self._failed_since(began, f"opening a connection failed: {first_line(exc)}")
                    self._failed(exc)
                raise
            if not self._read_only:
                self._backoff.reset()
                self._failure_lines.ended()
            self._retry_at = 0.0
            self._failing = None
            self._conn = conn
            self._watch = IdleWatch(conn)
            if self._stats is not None:
                self._stats.pg_queue_connects += 1
            return conn

    def _found_pooled(self) -> None:
        """Act as ``transaction_pooler: true`` says, its connection found lent to others."""
        self._pooled = self._unprepared = True
        if self.where not in _WARNED_POOLED:
            _WARNED_POOLED.add(self.where)
            logger.warning(
                "the durable queue's connections to %s go through a pooler in transaction mode "
                "(a probe sent to one did not come back): they set nothing on its sessions, "
                "which other clients share, and prepare nothing. Set "
                "brokers.pg_queue.transaction_pooler: true, and the settings on the services' "
                "role (see the docs: pgbouncer and other poolers)",
                self.where,
            )

    def _failed(self, exc: BaseException) -> None:
        if self._stats is not None:
            self._stats.pg_queue_connect_failures += 1
            self._stats.pg_queue_last_error = all_attempts(exc) or first_line(exc)
            self._stats.pg_queue_last_error_time = time.time()
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        why = with_cause(exc, all_attempts(exc) or first_line(exc))
        self.last_error = why
        self._failure_lines.log(
            why, "pg_queue connection to %s failed (%s); retrying in %.1f s", self.where, why, delay
        )

    async def close(self) -> None:
        """Close the connection for good (the broker is done)."""
        await self.discard()


def _farewell(conn: Connection) -> str | None:
    """Why the server ended *conn* while it was idle, if it said so before closing it.

    Its error (``FATAL: terminating connection due to administrator command``), sent while
    no statement ran, is still unread: libpq hands such an error to the notice handlers
    once it parses what came.
    """
    said: list[str] = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        if diag.message_primary:  # read now: the notice is freed once the handler returns
            said.append(_reason(diag))

    conn.add_notice_handler(handler)
    try:
        conn.pgconn.consume_input()
        conn.pgconn.is_busy()  # parses what was read
    except psycopg.Error:  # the end of the connection, read after what came before it
        pass
    finally:
        conn.remove_notice_handler(handler)
    return said[-1] if said else None


def _reason(diag: psycopg.errors.Diagnostic) -> str:
    """The server's message, and its SQLSTATE (``57P01``: an administrator's command)."""
    lines = (diag.message_primary or "").strip().splitlines()
    sqlstate = f" (SQLSTATE {diag.sqlstate})" if diag.sqlstate else ""
    return (lines[0] if lines else "no message") + sqlstate
