"""The connections of one provider, one per owner, from synchronous code.

Generated from ``slots_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg import Connection, Cursor

from dispatcher.publish.broker_errors import broker_unavailable
from dispatcher.publish.closing import LOCK_WAIT, sync_close_when_free, sync_later
from dispatcher.publish.connection_owners import Owner, abandon, sync_owner
from dispatcher.publish.connection_settings import SERVER_PID, connect_options
from dispatcher.publish.errors import BrokerUnavailable
from dispatcher.publish.idle_check import IdleWatch
from dispatcher.publish.jsonb import tolerant_adapters
from dispatcher.publish.provider_locks import sync_opening_lock


class Slot:
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
        is always of the statement that was checked for (see the provider's ``_run()``). Not
        while opening it: callers waiting then share the outcome of one attempt."""
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


class Slots:
    """The slots of one provider's connections to *conninfo*: one per owner.

    A slot is made for an owner on its first use, and those of gone owners (a forked
    parent's, a closed event loop's) are let go of then; closing lets go of the caller's.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._lock = threading.Lock()  # held only while no I/O runs
        self._slots: dict[tuple[int, ...], Slot] = {}

    def after_fork_in_child(self) -> None:
        """Replace the lock: one held by another thread at the fork would stay held for ever."""
        self._lock = threading.Lock()

    def connection_of(self, slot: Slot) -> Connection[Any] | None:
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
                try:
                    if fresh.prepare_threshold is not None:
                        row = (fresh.execute(SERVER_PID)).fetchone()
                        if row is not None and row[0] != fresh.info.backend_pid:
                            fresh.prepare_threshold = None  # a pooler in between
                except BaseException:
                    fresh.close()
                    raise
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

    def current(self) -> Slot:
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
            slot = self._slots[owner.key] = Slot(owner, sync_opening_lock(), sync_opening_lock())
            return slot

    def drop(self, slot: Slot, own: Connection[Any]) -> None:
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
        """
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

        For a provider no caller gets any more (see
        :func:`~dispatcher.publish.provider_registry_async.retire_providers`): its
        connection is closed once the statement running on it ends, by a task of the
        caller's event loop (a daemon thread, for the sync twin). Connections of other
        event loops still running are theirs to let go of. Tell whether none is left.
        """
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

    def _retire(self, owner: Owner) -> list[Slot]:
        """Let go of the slots of *owner* and of gone owners (under :attr:`_lock`)."""
        closing: list[Slot] = []
        for key, slot in list(self._slots.items()):
            if slot.owner.same(owner) or not slot.owner.alive():
                slot.retired = True
                closing.append(self._slots.pop(key))
        return closing

    def _close_retired(self, closing: list[Slot], owner: Owner) -> None:
        for slot in closing:
            if slot.connection is None:
                continue
            if slot.owner.same(owner):
                sync_close_when_free(slot.connection)
            else:
                abandon(slot.connection, slot.owner)
