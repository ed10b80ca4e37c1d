"""Who may use a connection of the SDK's own: a process, and an event loop for async ones.

Also letting go of a connection whose owner is gone (a forked child's inherited ones, a
closed event loop's), without using it.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from dispatcher.config.forking import at_fork
from dispatcher.publish.event_loops import running_loop

_inherited: list[object] = []
"""Connections a forked child found open: they belong to the parent, so they are never
closed here (that would end the parent's session); this only keeps them referenced."""


_pid = os.getpid()
"""This process's id, kept up to date in forked children: asking costs a system call."""


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


at_fork(after_in_child=_after_fork_in_child)


class Owner:
    """Who may use a connection of the SDK's own: a process, and an event loop for async ones.

    :attr:`key` tells owners apart in a dict; :meth:`same` and :meth:`alive` guard against a
    key reused by a new event loop at the address of a dead one.
    """

    __slots__ = ("_loop", "key", "pid")

    def __init__(self, loop: object | None = None) -> None:
        self.pid = _pid
        self._loop = None if loop is None else weakref.ref(loop)
        self.key: tuple[int, ...] = (self.pid,) if loop is None else (self.pid, id(loop))

    def same(self, other: Owner) -> bool:
        """Whether *other* is this owner (the same process, and the same live loop)."""
        if self.key != other.key:
            return False
        return self._loop is None or (other._loop is not None and self._loop() is other._loop())

    def alive(self) -> bool:
        """Whether its connection may still be used: in this process, by a loop not closed."""
        if self.pid != _pid:
            return False
        if self._loop is None:
            return True
        loop = self._loop()
        return loop is not None and not loop.is_closed()  # type: ignore[attr-defined]


def sync_owner() -> Owner:
    """Who may use a sync connection: the process that opened it (any of its threads)."""
    return Owner()


def async_owner() -> Owner:
    """Who may use an async connection: the process and event loop that opened it.

    :raises AsyncioRequired: when no asyncio event loop runs (trio's, say).
    """
    return Owner(running_loop())


def abandon(connection: Any, owner: Owner) -> None:
    """Let go of a connection whose owner is gone, without using it.

    A forked child must not close its parent's connection (that would end the parent's
    session); the connection of an event loop that was closed is closed at the socket level
    (nothing can use it any more).
    """
    if owner.pid != os.getpid():
        _inherited.append(connection)
    else:
        connection.pgconn.finish()
