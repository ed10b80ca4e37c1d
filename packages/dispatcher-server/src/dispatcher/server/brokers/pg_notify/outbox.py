"""The pg_notify broker's outgoing control replies, sent on the listening connection.

Control replies go out on the listening connection, as NOTIFYs on their ``reply_to``
channel (a reply too large for one NOTIFY goes as chunk envelopes, in one statement): the
serving task sends them between two reads, as it sends the self-check, and a reply's NOTIFY
held up or refused is cancelled or given up as the check's is (the reply is lost, the
connection kept). The replies waiting go together, in one statement or a few
(:func:`statements`): under a burst of commands, a reply sent alone would wait for a
statement (several turns of the event loop) for each reply ahead of it.

They used to have a connection of their own, opened by the first reply:
near ``max_connections`` a service that listened (and so received the command) could not
open it, and every reply was lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import psycopg

from dispatcher.publish.notify_statements import notify_statement
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES
from dispatcher.server.brokers.pg_notify.self_check import cancel_wait
from dispatcher.server.cancelling import execute_within

MAX_STATEMENT_BYTES: Final = 256 * 1024
"""Bytes of payloads one statement sends, at most, when it sends several replies."""


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
        """Send the replies waiting, together in as few statements as :func:`statements` makes.

        Within *timeout* (``self_check_timeout``) each statement, as the self-check's NOTIFY:
        one held up longer is cancelled, one the server refuses given up (its replies are
        lost, the connection kept).

        :raises StatementStuck: when a NOTIFY went on after the server was asked to cancel
            it (the connection is closed), and as psycopg does when the connection broke.
        """
        self.filled = anyio.Event()
        waiting, self._waiting = self._waiting, []
        groups = statements(waiting)
        for n, group in enumerate(groups):
            try:
                await execute_within(
                    conn,
                    *notify_statement(group.messages),
                    timeout,
                    cancel_wait=cancel_wait(timeout),
                )
            except psycopg.Error as exc:
                if conn.broken or exc.sqlstate is None:
                    self._fail_batch([o for later in groups[n:] for o in later.replies], exc)
                    raise
                for outgoing in group.replies:  # held up and cancelled, or refused: these only
                    outgoing.finish(exc)
                continue
            except BaseException as exc:
                self._fail_batch([o for later in groups[n:] for o in later.replies], exc)
                raise
            for outgoing in group.replies:
                outgoing.finish(None)

    @staticmethod
    def _fail_batch(batch: list[Outgoing], exc: BaseException) -> None:
        """Fail *batch* (sent or not: never again) for *exc*."""
        failure = exc if isinstance(exc, Exception) else ConnectionError("cancelled")
        for outgoing in batch:
            outgoing.finish(failure)


@dataclass
class Statement:
    """Replies to send in one statement, and its NOTIFYs (channel and payload each)."""

    replies: list[Outgoing] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0
    """Bytes of its payloads."""
    copies: Counter[tuple[str, str]] = field(default_factory=Counter)
    """How many times each NOTIFY is there already (before its spaces)."""

    def take(self, outgoing: Outgoing) -> bool:
        """Add *outgoing* unless it would make this statement too large (say whether it did).

        PostgreSQL delivers a notification once however many times one transaction sends
        it, and a client counts the replies it gets (two ``alive`` sent to one
        ``reply_to`` have the same reply): each copy of a NOTIFY gets one more space at its
        end than the copy before, which a JSON reader skips.
        """
        copies = Counter(self.copies)
        messages = []
        for channel, payload in outgoing.messages:
            spaces = copies[channel, payload]
            copies[channel, payload] += 1
            messages.append((channel, payload + " " * spaces))
        size = self.size + sum(len(payload.encode()) for _, payload in messages)
        longest = max((len(payload.encode()) for _, payload in messages), default=0)
        if self.replies and (size > MAX_STATEMENT_BYTES or longest > MAX_NOTIFY_PAYLOAD_BYTES):
            return False
        self.replies.append(outgoing)
        self.messages.extend(messages)
        self.size = size
        self.copies = copies
        return True


def statements(waiting: list[Outgoing]) -> list[Statement]:
    """*waiting* in groups, in order, each to send in one statement.

    A statement holds up to :data:`MAX_STATEMENT_BYTES` of payloads (a reply larger than
    that goes alone, its chunks in one statement as always); see :meth:`Statement.take`.
    """
    made = [Statement()]
    for outgoing in waiting:
        if not made[-1].take(outgoing):
            made.append(Statement())
            made[-1].take(outgoing)
    return made if made[0].replies else []
