"""The pg_notify broker's outgoing control replies, sent on the listening connection.

Control replies go out on the listening connection, as NOTIFYs on their ``reply_to``
channel (a reply too large for one NOTIFY goes as chunk envelopes, in one statement): the
serving task sends them between two reads, as it sends the self-check, and a reply's NOTIFY
held up or refused is cancelled or given up as the check's is (the reply is lost, the
connection kept). They used to have a connection of their own, opened by the first reply:
near ``max_connections`` a service that listened (and so received the command) could not
open it, and every reply was lost.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg

from dispatcher.publish.connections import notify_statement
from dispatcher.server.brokers.pg_notify.self_check import cancel_wait
from dispatcher.server.cancelling import execute_within


class Outgoing:
    """A control reply (its NOTIFYs) waiting for the listening connection to send it."""

    def __init__(self, messages: list[tuple[str, str]]) -> None:
        self.messages = messages
        self.done = anyio.Event()
        self.error: Exception | None = None

    def finish(self, error: Exception | None) -> None:
        """Sent (*error* ``None``), or not: wake the replier."""
        self.error = error
        self.done.set()


class Outbox:
    """The replies waiting for the serving task to send them (its length: how many)."""

    def __init__(self) -> None:
        self._waiting: list[Outgoing] = []
        self.filled = anyio.Event()
        """Set when a reply was added."""

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, messages: list[tuple[str, str]]) -> Outgoing:
        """Queue a reply (its NOTIFYs, as channel and payload); wake the serving task."""
        outgoing = Outgoing(messages)
        self._waiting.append(outgoing)
        self.filled.set()
        return outgoing

    def fail_all(self, why: str) -> None:
        """Fail the replies waiting to be sent, saying *why*."""
        for outgoing in self._waiting:
            outgoing.finish(ConnectionError(why))
        self._waiting = []
        self.filled = anyio.Event()

    async def send(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
        """Send the replies waiting, each in one statement (its chunks in order).

        Within *timeout* (``self_check_timeout``) each, as the self-check's NOTIFY: one held
        up longer is cancelled, one the server refuses given up (the reply is lost, the
        connection kept).

        :raises StatementStuck: when a NOTIFY went on after the server was asked to cancel
            it (the connection is closed), and as psycopg does when the connection broke.
        """
        self.filled = anyio.Event()
        batch, self._waiting = self._waiting, []
        for n, outgoing in enumerate(batch):
            try:
                await execute_within(
                    conn,
                    *notify_statement(outgoing.messages),
                    timeout,
                    cancel_wait=cancel_wait(timeout),
                )
            except psycopg.Error as exc:
                if conn.broken or exc.sqlstate is None:
                    self._fail_batch(batch[n:], exc)
                    raise
                outgoing.finish(exc)  # held up and cancelled, or refused: this one only
                continue
            except BaseException as exc:
                self._fail_batch(batch[n:], exc)
                raise
            outgoing.finish(None)

    @staticmethod
    def _fail_batch(batch: list[Outgoing], exc: BaseException) -> None:
        """Fail *batch* (sent or not: never again) for *exc*."""
        failure = exc if isinstance(exc, Exception) else ConnectionError("cancelled")
        for outgoing in batch:
            outgoing.finish(failure)
