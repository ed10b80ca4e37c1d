"""The pg_notify broker's I/O from synchronous code.

Generated from ``notify_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any, Final

import psycopg
from psycopg import Connection, Cursor, sql
from psycopg.pq import TransactionStatus

from dispatcher.config.forking import at_fork
from dispatcher.publish.broker_errors import (
    ROLLED_BACK,
    broker_failure,
    broker_unavailable,
    rolled_back,
    stopped_answering,
)
from dispatcher.publish.brokers import ReplyCollector, wait_until
from dispatcher.publish.caller_connections import CALLER_CONNECTION, caller_connection, caller_lost
from dispatcher.publish.closing import LOCK_WAIT, sync_close_when_free, sync_later
from dispatcher.publish.connection_owners import Owner, abandon, sync_owner
from dispatcher.publish.connection_settings import connect_options
from dispatcher.publish.errors import BrokerUnavailable, PublishError
from dispatcher.publish.event_loops import sync_in_loop
from dispatcher.publish.idle_check import IdleWatch
from dispatcher.publish.jsonb import tolerant_adapters
from dispatcher.publish.notify_statements import NOTIFY_ONE, notify_statement
from dispatcher.publish.provider_locks import sync_inside, sync_opening_lock
from dispatcher.publish.server_description import describe_server
from dispatcher.schema import (
    MAX_NOTIFY_PAYLOAD_BYTES,
    SERVICE_NAME_PREFIX,
    parse_service_name,
    split_message,
)

SERVICES_QUERY = (
    "SELECT application_name FROM pg_catalog.pg_stat_activity"
    " WHERE pg_catalog.starts_with(application_name, %s)"
    " AND datname = pg_catalog.current_database()"
    " ORDER BY 1"
)
"""The ``application_name`` of each service connected to this database, given
:data:`~dispatcher.schema.SERVICE_NAME_PREFIX`; :func:`~dispatcher.schema.parse_service_name`
reads the node id and the digest of the channels in it."""


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


class _Slot:
    """An owner's connection, the cursor NOTIFYs go through, and the locks to open and use it."""

    __slots__ = (
        "attempts",
        "connection",
        "failure",
        "notifier",
        "opening",
        "owner",
        "retired",
        "sending",
        "watch",
    )

    def __init__(self, owner: Owner, opening: Any, sending: Any) -> None:
        self.owner = owner
        self.opening = opening
        """Held by the one caller opening the connection; the others wait for it."""
        self.sending = sending
        """Held from the check that the connection is still open to the end of the statement
        sent on it: no statement of another caller breaks it in between, so that a failure
        is always of the statement that was checked for (see :meth:`_run`). Not while
        opening it: callers waiting then share the outcome of one attempt."""
        self.connection: Connection[Any] | None = None
        self.attempts = 0
        """Attempts to open it that have ended, well or not."""
        self.failure: BrokerUnavailable | None = None
        """Why the last attempt failed (``None`` once one succeeded)."""
        # A new cursor per statement costs more than building and checking the message.
        # Its execute() holds the connection's lock throughout, so concurrent callers may
        # share it; nobody reads its results.
        self.notifier: Cursor[Any] | None = None
        self.retired = False
        """Set (under the provider's lock) once the slot is let go of: callers that got it
        before take a new one, and its connection is closed (or abandoned)."""
        self.watch: IdleWatch | None = None
        """The check, before a NOTIFY, that the server did not end the connection."""


class ConnectionProvider:
    """The SDK's own autocommit connection: opened on first use, shared, re-opened when lost.

    Concurrent callers share it, and wait while one of them opens it. Each event loop has
    its own (a connection serves one loop; closed loops' connections are let go of), and
    a process forked after first use opens its own.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._lock = threading.Lock()  # held only while no I/O runs
        self._slots: dict[tuple[int, ...], _Slot] = {}
        self._spare: ConnectionProvider | None = None
        """The provider of callers that re-entered while their thread sent (see :meth:`_run`)."""

    def connection(self) -> Connection[Any]:
        """Return the open connection, opening one if there is none usable here.

        :raises BrokerUnavailable: when the database cannot be reached.
        """
        while True:
            own = self._connection_of(self._slot())
            if own is not None:
                return own

    def _connection_of(self, slot: _Slot) -> Connection[Any] | None:
        """The connection of *slot*, opened by this caller if none is open yet.

        Callers that waited while another tried share its outcome: its connection, or its
        failure (an unreachable server fails them all at once, not one after another).
        ``None`` when the slot was let go of meanwhile (:meth:`close`): take a new one.
        """
        current = slot.connection
        if current is not None and not current.closed:
            return current
        seen = slot.attempts
        with slot.opening:
            if slot.retired:
                return None
            current = slot.connection
            if current is not None and not current.closed:
                return current  # another caller opened it meanwhile
            if slot.attempts != seen and slot.failure is not None:
                raise BrokerUnavailable(str(slot.failure))  # another caller's, just now
            try:
                # Its adapters read a job's result that Python cannot decode (set by hand)
                # as None instead of refusing it (see dispatcher.publish.jsonb).
                fresh = Connection.connect(
                    self.conninfo, context=tolerant_adapters(), **connect_options(self.conninfo)
                )
            except psycopg.Error as exc:
                slot.attempts += 1
                slot.failure = broker_unavailable(self.conninfo, exc, "connect to")
                raise slot.failure from None
            slot.attempts += 1
            with self._lock:  # so that close() either sees it or the opener sees close()'s
                retired = slot.retired
                if not retired:
                    slot.connection, slot.notifier, slot.failure = fresh, None, None
            if retired:
                fresh.close()  # nobody else has it
                return None
            return fresh

    def _slot(self) -> _Slot:
        """The slot of the caller's owner, made (and those of gone owners let go of) if new."""
        owner = sync_owner()
        slot = self._slots.get(owner.key)
        if slot is not None and slot.owner.same(owner):
            return slot
        with self._lock:
            slot = self._slots.get(owner.key)
            if slot is not None and slot.owner.same(owner):
                return slot
            for key, other in list(self._slots.items()):
                if not other.owner.alive() or key == owner.key:
                    del self._slots[key]
                    other.retired = True
                    if other.connection is not None:
                        abandon(other.connection, other.owner)
            slot = self._slots[owner.key] = _Slot(owner, sync_opening_lock(), sync_opening_lock())
            return slot

    def notify_many(self, channels: Sequence[str], payloads: Sequence[str]) -> None:
        """NOTIFY each payload on its channel, in one round trip.

        A connection the server ended while it was idle (it restarted, the connection was
        terminated or timed out) is replaced before the NOTIFYs are sent; they are never
        sent twice (see :meth:`notify`).

        :raises BrokerUnavailable: when the database cannot be reached.
        :raises PublishError: when it refuses the NOTIFY for good (a missing privilege).
        """
        self.notify(list(zip(channels, payloads, strict=True)))

    def notify(self, messages: Sequence[tuple[str, str]]) -> None:
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
            self._run(NOTIFY_ONE, messages[0], "send to", "the NOTIFY", notifying=True)
        else:
            statement = notify_statement(messages)
            self._run(*statement, "send to", "the NOTIFY", notifying=True)

    def execute(
        self,
        query: str,
        params: Sequence[Any],
        doing: str = "send to",
        what: str = "the statement",
        *,
        resend: bool = True,
    ) -> Cursor[Any]:
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
        return self._run(query, params, doing, what, notifying=False, resend=resend)

    def _run(
        self,
        query: str,
        params: Sequence[Any],
        doing: str,
        what: str,
        *,
        notifying: bool,
        resend: bool = False,
    ) -> Cursor[Any]:
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
        marker = sync_inside
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
            return provider._run_shared(
                query, params, doing, what, notifying=notifying, resend=resend
            )
        finally:
            marker.depth = depth

    def _spare_provider(self) -> ConnectionProvider:
        """The provider of the connection re-entering callers send on (made on first use)."""
        spare = self._spare
        if spare is None:
            with _spare_lock:  # (never taken by a caller re-entering from a spare's send)
                spare = self._spare
                if spare is None:
                    spare = self._spare = ConnectionProvider(self.conninfo)
        return spare

    def _run_shared(
        self,
        query: str,
        params: Sequence[Any],
        doing: str,
        what: str,
        *,
        notifying: bool,
        resend: bool,
    ) -> Cursor[Any]:
        """:meth:`_run` on the slot's shared connection."""
        resends = 1 if resend and not notifying else 0
        lost: BrokerUnavailable | None = None
        checked = rolled = False
        while True:
            slot = self._slot()
            own = self._open_for_sending(slot, lost)
            if own is None:
                continue  # closed by close() meanwhile
            with slot.sending:
                if own is not slot.connection or own.closed:
                    continue  # replaced, or broken by another caller's statement, meanwhile
                watch = slot.watch
                if watch is None or watch.connection is not own:
                    watch = slot.watch = IdleWatch(own)
                if own.pgconn.transaction_status != TransactionStatus.IDLE:
                    self._drop(slot, own)  # busy: left so by a caller interrupted
                    continue
                if not checked and watch.closed():
                    checked = True  # (once: a connection just opened is sent on)
                    self._drop(slot, own)
                    continue
                try:
                    if not notifying:
                        return own.execute(query, params)
                    notifier = slot.notifier
                    if notifier is None or notifier.connection is not own:
                        notifier = slot.notifier = own.cursor()
                    return notifier.execute(query, params)
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
                        self._drop(slot, own)
                    raise failure from None
                except BaseException:
                    # Interrupted (an exception of a signal handler's or a deadline's, a
                    # gevent.Timeout) with the statement perhaps under way and its reply
                    # unread: the next caller would find the connection busy ("another
                    # command is already in progress"). It is let go of; the statement is
                    # not sent again (it may have been delivered).
                    if own.pgconn.transaction_status != TransactionStatus.IDLE:
                        self._drop(slot, own)
                    raise

    def _open_for_sending(
        self, slot: _Slot, lost: BrokerUnavailable | None
    ) -> Connection[Any] | None:
        """The connection of *slot* (see :meth:`_connection_of`), before ``slot.sending``.

        After *lost* (the statement's first send failed), a failure to connect again says
        that the send failed first: the database stopped answering, it did not refuse.
        """
        try:
            return self._connection_of(slot)
        except BrokerUnavailable as exc:
            if lost is None:
                raise
            raise BrokerUnavailable(
                f"{lost}; connecting again failed: {exc}; {NOT_SENT_AGAIN}"
            ) from None

    def _drop(self, slot: _Slot, own: Connection[Any]) -> None:
        """Close *own*: ended while idle, left busy, or a write on it was refused as read-only.

        The server ended it while it was idle, or a caller interrupted left it busy. The next
        use opens another. Called under ``slot.sending``, with *own* the slot's: no
        other caller's statement runs on it.
        """
        with self._lock:
            if slot.connection is own:
                slot.connection, slot.notifier = None, None
        own.close()

    def close(self) -> None:
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
            spare.close()
        owner = sync_owner()
        if not self._lock.acquire(timeout=LOCK_WAIT):
            sync_later(self._close_when_unlocked, owner)
            return
        try:
            closing = self._retire(owner)
        finally:
            self._lock.release()
        self._close_retired(closing, owner)

    def let_go_here(self) -> bool:
        """Let go of the caller's connection, and of those whose owners are gone, for good.

        For a provider no caller gets any more (see :func:`retire_providers`): its
        connection is closed once the statement running on it ends, by a task of the
        caller's event loop (a daemon thread, for the sync twin). Connections of other
        event loops still running are theirs to let go of. Tell whether none is left.
        """
        spare = self._spare
        if spare is not None:
            spare.let_go_here()
        owner = sync_owner()
        slots = self._slots
        if owner.key not in slots and all(slot.owner.alive() for slot in slots.values()):
            return not slots
        if not self._lock.acquire(timeout=LOCK_WAIT):
            return False  # (the thread this caller interrupted holds it: another time)
        try:
            closing = self._retire(owner)
        finally:
            self._lock.release()
        for slot in closing:
            if slot.connection is None:
                continue
            if slot.owner.same(owner):
                sync_later(sync_close_when_free, slot.connection)
            else:
                abandon(slot.connection, slot.owner)
        return not self._slots

    def _close_when_unlocked(self, owner: Owner) -> None:
        with self._lock:
            closing = self._retire(owner)
        self._close_retired(closing, owner)

    def _retire(self, owner: Owner) -> list[_Slot]:
        """Let go of the slots of *owner* and of gone owners (under :attr:`_lock`)."""
        closing: list[_Slot] = []
        for key, slot in list(self._slots.items()):
            if slot.owner.same(owner) or not slot.owner.alive():
                slot.retired = True
                closing.append(self._slots.pop(key))
        return closing

    def _close_retired(self, closing: list[_Slot], owner: Owner) -> None:
        for slot in closing:
            if slot.connection is None:
                continue
            if slot.owner.same(owner):
                sync_close_when_free(slot.connection)
            else:
                abandon(slot.connection, slot.owner)


_providers: dict[str, ConnectionProvider] = {}
_retired: list[ConnectionProvider] = []
"""Providers let go of (no config in use names their conninfo) that still hold connections:
each event loop lets go of its own at its next submission (see :func:`retire_providers`)."""
# Re-entrant: a signal handler submitting in the thread it interrupted may find it making
# the provider.
_providers_lock = threading.RLock()
_spare_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held forever in the child.
    global _providers_lock, _spare_lock
    _providers_lock, _spare_lock = threading.RLock(), threading.Lock()
    for provider in _providers.values():
        provider._lock = threading.Lock()
        if provider._spare is not None:
            provider._spare._lock = threading.Lock()


at_fork(after_in_child=_after_fork_in_child)


def shared_provider(conninfo: str) -> ConnectionProvider:
    """The SDK's own connection to *conninfo*, shared by every caller in this process."""
    if _retired:
        let_go_retired()
    provider = _providers.get(conninfo)
    if provider is not None:
        return provider
    with _providers_lock:
        provider = _providers.get(conninfo)
        if provider is None:
            provider = _providers[conninfo] = ConnectionProvider(conninfo)
        return provider


def retire_providers(keep: Collection[str]) -> None:
    """Let go of the SDK's own connections to conninfos not in *keep*, closed once free.

    For a config replaced by one that names other databases: its connections would
    otherwise stay open for good. Those of the caller's event loop (of the process, for the
    sync twin) are closed now, once the statement running on them ends; those of other
    event loops at their next submission. A caller that still needs one opens a new one.
    """
    with _providers_lock:
        unused = [provider for conninfo, provider in _providers.items() if conninfo not in keep]
        for provider in unused:
            del _providers[provider.conninfo]
        _retired.extend(unused)
    if sync_in_loop():  # (else each event loop lets go of its own at its next submission)
        let_go_retired()


def let_go_retired() -> None:
    """Let go of the caller's connections of the providers retired (:func:`retire_providers`)."""
    for provider in list(_retired):
        if provider.let_go_here():
            with contextlib.suppress(ValueError):  # (another caller's, just now)
                _retired.remove(provider)


def close_connections() -> None:
    """Close the SDK's own connections (they re-open on the next submission).

    Call it when an application shuts down, or in tests between event loops. A signal
    handler may call it (it waits for no lock the thread it interrupted may hold: what is
    in use then is closed once it is free).
    """
    # Without _providers_lock, which the interrupted thread may hold (in shared_provider):
    # copying the dict is atomic, and a provider being made has no connection yet.
    providers = list(_providers.values())
    for provider in providers:
        provider.close()


def send(
    conninfo: str | None,
    messages: Sequence[tuple[str, str]],
    connection: object | None,
    whose: str = CALLER_CONNECTION,
) -> None:
    """NOTIFY each ``(channel, payload)`` of *messages*, in order, in one statement.

    With *connection*, the NOTIFYs join its current transaction: delivered when it commits,
    never if it rolls back; errors name it as *whose* it is. Without, the SDK's own
    connection to *conninfo* sends them at once, at most once (see
    :meth:`AsyncConnectionProvider.notify`).

    :raises BrokerUnavailable: when the database cannot be reached; when *connection* is
        closed or its transaction aborted (nothing is sent on it then).
    :raises PublishError: when the database refuses the NOTIFY for good (a missing privilege).
    """
    if connection is not None:
        caller = caller_connection(connection, Connection, "submit_task", "asubmit_task", whose)
        try:
            caller.execute(*notify_statement(messages))
        except psycopg.Error as exc:
            lost = caller_lost(caller, exc, "send to", whose)
            if lost is None:
                raise
            raise lost from exc
        return
    assert conninfo is not None, "without a connection, a conninfo is needed"
    shared_provider(conninfo).notify(messages)


def control_with_reply(
    conninfo: str,
    channel: str,
    text: str,
    reply_to: str,
    replies: ReplyCollector,
    *,
    expected_replies: int | None,
    timeout: float,
) -> None:
    """NOTIFY the control message *text* on *channel* and collect replies on *reply_to*.

    Without *expected_replies*, the services connected to the database and listening on
    *channel* are looked up first (each names its LISTEN connection after its node id and
    its channels) and waited for; those whose names cannot tell whether they listen there
    (they listen on many channels) are waited for too, but not for long (see
    :func:`~dispatcher.publish.brokers.wait_until`).

    :raises BrokerUnavailable: when the database cannot be reached, or the connection is lost.
    :raises PublishError: when the database refuses the command for good (a missing privilege).
    """
    try:
        with _connect(conninfo) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(reply_to)))
            if expected_replies is None:
                cursor = conn.execute(SERVICES_QUERY, (SERVICE_NAME_PREFIX,))
                services = [parse_service_name(str(name)) for (name,) in cursor.fetchall()]
                listening = [s for s in services if s is not None and s.may_listen_on(channel)]
                replies.expected_nodes = [s.node_id for s in listening if s.tells_channels]
                replies.uncertain_nodes = [s.node_id for s in listening if not s.tells_channels]
                replies.unlisted_nodes = [s.node_id for s in listening if s.channels_digest is None]
                replies.expected = len(replies.expected_nodes)
            else:
                replies.expected = expected_replies
            payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
            conn.execute(*notify_statement([(channel, payload) for payload in payloads]))
            sent = time.monotonic()
            deadline = sent + timeout
            while not replies.settled:
                now = time.monotonic()
                deadline = wait_until(replies, sent, deadline, now)
                remaining = deadline - now
                if remaining <= 0:
                    break
                for notify in conn.notifies(timeout=remaining, stop_after=1):
                    if notify.channel == reply_to:
                        replies.add(notify.payload)  # which joins chunked replies, or says why not
    except psycopg.Error as exc:
        raise broker_failure(conninfo, exc, "send to", "the control command") from None


def _connect(conninfo: str) -> Connection[Any]:
    options = connect_options(conninfo) | {"application_name": "dispatcher-control"}
    try:
        return Connection.connect(conninfo, **options)
    except psycopg.Error as exc:
        raise broker_unavailable(conninfo, exc, "connect to") from None
