"""The SDK's own connection to one conninfo, from asyncio code (the sync twin's source).

Opened on first use, shared by concurrent callers, re-opened when lost; statements sent on
it at most once (NOTIFYs) or once more after a lost connection, and re-entering callers (a
signal handler) sent on a spare connection. ``provider_sync.py`` is generated from this file
by ``tools/async_to_sync.py``; edit this one and run ``hatch run generate-sync``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.pq import TransactionStatus

from dispatcher.config.forking import at_fork
from dispatcher.publish.broker_errors import (
    ROLLED_BACK,
    broker_failure,
    broker_unavailable,
    rolled_back,
    stopped_answering,
)
from dispatcher.publish.errors import BrokerUnavailable, PublishError
from dispatcher.publish.idle_check import IdleWatch
from dispatcher.publish.notify_statements import NOTIFY_ONE, notify_statement
from dispatcher.publish.provider_locks import async_inside
from dispatcher.publish.server_description import describe_server
from dispatcher.publish.slots_async import AsyncSlots, Slot

NOT_RESENT: Final = (
    "the NOTIFY may or may not have been delivered: it is not sent again, since a task "
    "sent twice would run twice"
)
"""What the error of a NOTIFY whose connection broke once it was sent says of it."""

NOT_SENT_AGAIN: Final = (
    "the statement may or may not have run before the connection broke (a durable job is"
    " stored once per uuid: send it again with the same uuid=)"
)
"""What the error of a statement that could not be sent again (no new connection) says."""


_spare_lock = threading.Lock()
"""Taken to make a provider's spare (see :meth:`AsyncConnectionProvider._spare_provider`)."""


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held forever in the child.
    global _spare_lock
    _spare_lock = threading.Lock()


at_fork(after_in_child=_after_fork_in_child)


class AsyncConnectionProvider:
    """The SDK's own autocommit connection: opened on first use, shared, re-opened when lost.

    Concurrent callers share it, and wait while one of them opens it. Each event loop has
    its own (a connection serves one loop; closed loops' connections are let go of), and
    a process forked after first use opens its own.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.slots = AsyncSlots(conninfo)
        """Its connections, one per owner."""
        self._spare: AsyncConnectionProvider | None = None
        """The provider of callers that re-entered while their thread sent (see :meth:`_run`)."""

    def after_fork_in_child(self) -> None:
        """Replace its locks and its spare's, in a forked child.

        One held by another thread at the fork would stay held for ever in the child.
        """
        self.slots.after_fork_in_child()
        if self._spare is not None:
            self._spare.slots.after_fork_in_child()

    async def connection(self) -> AsyncConnection[Any]:
        """Return the open connection, opening one if there is none usable here.

        :raises BrokerUnavailable: when the database cannot be reached.
        """
        while True:
            own = await self.slots.connection_of(self.slots.current())
            if own is not None:
                return own

    async def notify_many(self, channels: Sequence[str], payloads: Sequence[str]) -> None:
        """NOTIFY each payload on its channel, in one round trip.

        A connection the server ended while it was idle (it restarted, the connection was
        terminated or timed out) is replaced before the NOTIFYs are sent; they are never
        sent twice (see :meth:`notify`).

        :raises BrokerUnavailable: when the database cannot be reached.
        :raises PublishError: when it refuses the NOTIFY for good (a missing privilege).
        """
        await self.notify(list(zip(channels, payloads, strict=True)))

    async def notify(self, messages: Sequence[tuple[str, str]]) -> None:
        """NOTIFY each ``(channel, payload)`` of *messages*, in order, in one statement.

        At most once: a connection the server ended while it was idle is replaced before
        they are sent; one that breaks once they were sent (the server may have run the
        statement, its reply lost) fails the call, saying that they may or may not have
        been delivered, and they are not sent again: a task delivered twice would run twice.

        :raises BrokerUnavailable: when the database cannot be reached, or stopped
            answering during the send.
        :raises PublishError: when it refuses the NOTIFY for good (a missing privilege).
        """
        if len(messages) == 1:  # the common case, without building the statement
            await self._run(NOTIFY_ONE, messages[0], "send to", "the NOTIFY", notifying=True)
        else:
            statement = notify_statement(messages)
            await self._run(*statement, "send to", "the NOTIFY", notifying=True)

    async def execute(
        self,
        query: str,
        params: Sequence[Any],
        doing: str = "send to",
        what: str = "the statement",
        *,
        resend: bool = True,
    ) -> AsyncCursor[Any]:
        """Run one statement (a transaction of its own) and return its cursor, rows fetched.

        A connection the server ended while idle is replaced first; one that breaks under
        the statement is replaced and the statement run once more on the new one: make it
        safe to repeat (the statement may have committed before the break), or pass
        *resend* false (a statement that NOTIFYs: it fails, saying it may have been sent).
        A statement the server rolled back for a serialization failure or a deadlock did
        nothing: it is sent once more, whatever *resend* says.

        :raises BrokerUnavailable: naming the server and what was being done (*doing*),
            when the database cannot be reached, or fails the statement in a way sending it
            again later may cure (a shutdown, a lock or statement timeout, a serialization
            failure or deadlock twice).
        :raises PublishError: naming the server and *what* was refused, when the database
            refuses the statement for a reason no retry cures (a missing privilege).
        :raises psycopg.errors.UndefinedTable: when a table the statement names is missing.
        :raises psycopg.errors.UndefinedColumn: when a column it names is missing (the tables
            are older than the statement).
        """
        return await self._run(query, params, doing, what, notifying=False, resend=resend)

    async def _run(
        self,
        query: str,
        params: Sequence[Any],
        doing: str,
        what: str,
        *,
        notifying: bool,
        resend: bool = False,
    ) -> AsyncCursor[Any]:
        """:meth:`execute`; *notifying* statements go through the shared cursor.

        A statement is sent again only when it surely did not reach the server (the
        connection was closed before it was sent), or once when it is not a NOTIFY; and once
        when the server rolled it back whole (:data:`ROLLED_BACK`: it did nothing).

        A caller that re-enters while its thread is already in here (a signal handler, or a
        ``__del__`` the garbage collector runs, submitting in the thread it interrupted,
        which may hold the slot's locks and the connection's) does not wait for ever for
        those locks: it sends on a second connection, kept for such callers. One that
        re-enters from there too (a handler interrupting a handler's send) is refused.

        :raises PublishError: re-entered twice (nothing is sent).
        """
        marker = async_inside
        depth = marker.depth
        if depth > 1:
            raise PublishError(
                f"cannot send to {describe_server(self.conninfo)}: a signal handler (or a"
                " __del__) submitted while its thread was sending for another one, which had"
                " interrupted a send itself; nothing was sent"
            )
        marker.depth = depth + 1
        try:
            provider = self if depth == 0 else self._spare_provider()
            return await provider._run_shared(
                query, params, doing, what, notifying=notifying, resend=resend
            )
        finally:
            marker.depth = depth

    def _spare_provider(self) -> AsyncConnectionProvider:
        """The provider of the connection re-entering callers send on (made on first use)."""
        spare = self._spare
        if spare is None:
            with _spare_lock:  # (never taken by a caller re-entering from a spare's send)
                spare = self._spare
                if spare is None:
                    spare = self._spare = AsyncConnectionProvider(self.conninfo)
        return spare

    async def _run_shared(
        self,
        query: str,
        params: Sequence[Any],
        doing: str,
        what: str,
        *,
        notifying: bool,
        resend: bool,
    ) -> AsyncCursor[Any]:
        """:meth:`_run` on the slot's shared connection."""
        resends = 1 if resend and not notifying else 0
        lost: BrokerUnavailable | None = None
        checked = rolled = False
        while True:
            slot = self.slots.current()
            own = await self._open_for_sending(slot, lost)
            if own is None:
                continue  # closed by close() meanwhile
            async with slot.sending:
                if own is not slot.connection or own.closed:
                    continue  # replaced, or broken by another caller's statement, meanwhile
                watch = slot.watch
                if watch is None or watch.connection is not own:
                    watch = slot.watch = IdleWatch(own)
                if own.pgconn.transaction_status != TransactionStatus.IDLE:
                    await self.slots.drop(slot, own)  # busy: left so by a caller interrupted
                    continue
                if not checked and watch.closed():
                    checked = True  # (once: a connection just opened is sent on)
                    await self.slots.drop(slot, own)
                    continue
                try:
                    if not notifying:
                        return await own.execute(query, params)
                    notifier = slot.notifier
                    if notifier is None or notifier.connection is not own:
                        notifier = slot.notifier = own.cursor()
                    return await notifier.execute(query, params)
                except ROLLED_BACK as exc:
                    if rolled:
                        raise rolled_back(self.conninfo, exc) from None
                    rolled = True
                    continue
                except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                    raise  # the database answered: the caller knows which table is meant
                except psycopg.OperationalError as exc:
                    if slot.retired and own.closed and not own.broken:
                        # close() closed it, which it does only while no statement runs on
                        # it: before this one was sent. (Broken, the server may have run it.)
                        continue
                    if not own.closed:  # the server answered: a shutdown, a timeout
                        raise broker_unavailable(self.conninfo, exc, doing) from None
                    then = "" if resends else NOT_RESENT
                    lost = stopped_answering(self.conninfo, exc, doing, then=then)
                    if resends == 0:
                        raise lost from None
                    resends -= 1
                except psycopg.Error as exc:
                    failure = broker_failure(self.conninfo, exc, doing, what, own)
                    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
                        # A standby, or a session made read-only: the next call connects
                        # again, which may reach the primary (a VIP or proxy moved to it)
                        # or a session without the setting.
                        await self.slots.drop(slot, own)
                    raise failure from None
                except BaseException:
                    # Interrupted (an exception of a signal handler's or a deadline's, a
                    # gevent.Timeout) with the statement perhaps under way and its reply
                    # unread: the next caller would find the connection busy ("another
                    # command is already in progress"). It is let go of; the statement is
                    # not sent again (it may have been delivered).
                    if own.pgconn.transaction_status != TransactionStatus.IDLE:
                        await self.slots.drop(slot, own)
                    raise

    async def _open_for_sending(
        self, slot: Slot, lost: BrokerUnavailable | None
    ) -> AsyncConnection[Any] | None:
        """The connection of *slot* (see :meth:`AsyncSlots.connection_of`), before ``slot.sending``.

        After *lost* (the statement's first send failed), a failure to connect again says
        that the send failed first: the database stopped answering, it did not refuse.
        """
        try:
            return await self.slots.connection_of(slot)
        except BrokerUnavailable as exc:
            if lost is None:
                raise
            raise BrokerUnavailable(
                f"{lost}; connecting again failed: {exc}; {NOT_SENT_AGAIN}"
            ) from None

    async def close(self) -> None:
        """Close the caller's connection; let go of those whose owners are gone.

        Callers sending meanwhile are safe: the connection is closed once the statement
        running on it ends; those that got it but had not sent yet send on a new one.
        Connections of other event loops still running are theirs to close.

        Never waits long for a lock, so that a signal handler may call the sync twin: the
        thread it interrupted may hold one (sending on the connection, or taking it). The
        closing is then left to a daemon thread (a task, in async code), which closes it
        once the lock is let go of.

        The connection kept for callers re-entering while their thread sent is closed too.
        """
        spare = self._spare
        if spare is not None:
            await spare.close()
        await self.slots.close()

    def let_go_here(self) -> bool:
        """Let go of the caller's connection, and of those whose owners are gone, for good.

        For a provider no caller gets any more (see
        :func:`~dispatcher.publish.provider_registry_async.retire_providers`): its
        connection is closed once the statement running on it ends, by a task of the
        caller's event loop (a daemon thread, for the sync twin). Connections of other
        event loops still running are theirs to let go of. Tell whether none is left.
        """
        spare = self._spare
        if spare is not None:
            spare.let_go_here()
        return self.slots.let_go_here()
