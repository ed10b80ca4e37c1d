"""The pg_notify broker's self-check: a NOTIFY round trip on a private channel.

The broker checks its own connection when no notification has arrived for a while; a
connection that fails the check is replaced (see :mod:`.broker`). The self-check's message is
handled here and never delivered.

A connection whose server answers, but holds up or refuses the check's NOTIFY, is kept:
replacing it would not help, and notifications would be lost meanwhile. A NOTIFY held up
past ``self_check_timeout`` (every NOTIFY waits at commit for a cluster-wide lock, which a
committing NOTIFY holds: one waiting for a synchronous standby, say) is cancelled on the
server, and that logged, once a minute at most. One whose NOTIFY the server refuses (its
NOTIFY queue is full, say) answered as well: it is kept, and the server's error logged,
once a minute at most. Only a NOTIFY that
the cancel does not end in time has the connection replaced: its session may then stay on
the server, waiting, so the delays before the next connections keep growing while that
happens again, and listening sessions are ones the server ends once their client is gone
(``client_connection_check_interval``, where the server has it), lest they pile up.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import anyio
import psycopg

from dispatcher.config import PgNotifyBroker as PgNotifySettings
from dispatcher.publish import describe_server
from dispatcher.publish.notify_statements import NOTIFY_ONE
from dispatcher.server.brokers.pg_notify.drain import Drain
from dispatcher.server.cancelling import CANCEL_WAIT, StatementStuck, execute_within
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.listener")


class SelfCheckTimeout(TimeoutError):
    """The self-check's NOTIFY did not come back within ``self_check_timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            "the self-check round trip took longer than brokers.pg_notify.self_check_timeout "
            f"({timeout:g} s)"
        )


class SelfCheckStuck(SelfCheckTimeout):
    """The self-check's NOTIFY went on after the server was asked to cancel it.

    Its connection is closed; its session may stay on the server.
    """

    def __init__(self, timeout: float, cancel_wait: float) -> None:
        TimeoutError.__init__(
            self,
            "the self-check round trip took longer than brokers.pg_notify.self_check_timeout "
            f"({timeout:g} s), and its NOTIFY went on {cancel_wait:g} s after the server was "
            "asked to cancel it",
        )


def cancel_wait(timeout: float) -> float:
    """Seconds the server has to cancel a self-check's NOTIFY held up past *timeout*.

    As long as the self-check's timeout (a dead connection is replaced that much later),
    within 1 s and :data:`~dispatcher.server.cancelling.CANCEL_WAIT`.
    """
    return min(max(timeout, 1.0), CANCEL_WAIT)


SERVER_TROUBLE_WINDOW: Final = 60.0
"""Seconds in which one line at most says that the server held up or refused a self-check's
NOTIFY (the others are counted)."""

HELD_UP: Final = (
    "the self-check's NOTIFY on %s was held up on the server for more than "
    "brokers.pg_notify.self_check_timeout (%g s), and cancelled; the connection answered and "
    "is kept. Every NOTIFY waits at commit for a cluster-wide lock, which a transaction "
    "that sent one holds until its commit completes: one waiting for a synchronous standby "
    "(synchronous_standby_names set, the standby gone or behind; pg_stat_activity shows it "
    "with wait_event SyncRep, the others waiting with wait_event object), or for a slow "
    "disk. Notifications (tasks, control commands and replies) are held up meanwhile"
)

REFUSED: Final = "%s refused the self-check's NOTIFY (%s); the connection answered and is kept"

REFUSED_FULL: Final = (
    "%s refused the self-check's NOTIFY (%s): its NOTIFY queue is %.0f %% full "
    "(pg_notification_queue_usage() = %.3g). A session that LISTENs and stays in a "
    "transaction keeps it from being emptied (the server log names its PID: 'NOTIFY queue "
    "is ... full'); until it ends its transaction, every NOTIFY fails: tasks and control "
    "commands sent over pg_notify, control replies (durable queues' jobs are stored still, "
    "and found by polling). The connection answered and is kept"
)


class SelfCheck:
    """The broker's self-check on its channel *channel*: each round trip, and what it logs."""

    def __init__(self, settings: PgNotifySettings, channel: str, stats: ServiceStats) -> None:
        self.settings = settings
        self.channel = channel
        self._stats = stats
        self._check_serial = 0
        self._server_trouble = RateLimitedLog(
            logger, logging.WARNING, 1, window=SERVER_TROUBLE_WINDOW
        )

    async def run(self, conn: psycopg.AsyncConnection[Any], drain: Drain) -> None:
        """Send a NOTIFY to ourselves; raise :class:`SelfCheckTimeout` if it comes back late.

        A NOTIFY that the server holds up, or refuses, is no sign of a dead connection: the
        server answered (see the module).

        :raises SelfCheckStuck: when the NOTIFY is held up, and not cancelled in time.
        """
        self._check_serial += 1
        token = str(self._check_serial)
        started = time.monotonic()
        timeout = self.settings.self_check_timeout
        wait = cancel_wait(timeout)
        try:
            await execute_within(conn, NOTIFY_ONE, (self.channel, token), timeout, cancel_wait=wait)
        except psycopg.errors.QueryCanceled:
            self._server_trouble.log(HELD_UP, self._where(), timeout)
            return
        except StatementStuck:
            raise SelfCheckStuck(timeout, wait) from None
        except psycopg.Error as exc:
            if conn.broken or exc.sqlstate is None:
                raise
            await self._refused(conn, exc)
            return
        if time.monotonic() - started >= timeout:  # completed once asked to cancel
            self._server_trouble.log(HELD_UP, self._where(), timeout)
            return
        try:
            with anyio.fail_after(timeout - (time.monotonic() - started)):
                while True:
                    drain.run()
                    if drain.check_token == token:
                        break
                    await drain.wait()
        except TimeoutError:
            raise SelfCheckTimeout(timeout) from None
        took = time.monotonic() - started
        stats = self._stats
        stats.self_checks += 1
        stats.self_check_seconds += took
        stats.self_check_max_seconds = max(stats.self_check_max_seconds, took)
        logger.debug("self-check round trip %.1f ms", took * 1000)

    def _where(self) -> str:
        return describe_server(self.settings.conninfo)

    async def _refused(self, conn: psycopg.AsyncConnection[Any], exc: psycopg.Error) -> None:
        """Log that the server refused the self-check's NOTIFY (with the queue's usage if full)."""
        reason = f"{first_line(exc)}, SQLSTATE {exc.sqlstate}"
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
            try:
                row = await (
                    await conn.execute("SELECT pg_catalog.pg_notification_queue_usage()")
                ).fetchone()
            except psycopg.Error:
                row = None
            if row is not None:
                usage = float(row[0])
                self._server_trouble.log(REFUSED_FULL, self._where(), reason, usage * 100, usage)
                return
        self._server_trouble.log(REFUSED, self._where(), reason)
