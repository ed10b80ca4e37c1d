"""What a provider's callers wait on while one opens its connection, sync and async.

Also how deep a thread is inside a provider's sending, so that a caller re-entering there
(a signal handler) does not wait for ever on the locks its thread holds.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio


class ThreadInside(threading.local):
    """How deep the calling thread is inside sync providers' sending (or opening) now.

    A signal handler, or a ``__del__`` the cyclic garbage collector runs, executes in the
    thread it interrupted; were that thread inside, holding the locks of the connection it
    sends on (or opens), a submission of the handler waiting for them would wait for ever.
    """

    depth: int = 0


class NeverInside:
    """:class:`ThreadInside` of asyncio code, where no caller re-enters so.

    A signal handler or a ``__del__`` cannot await (it may call the sync API, which has
    connections of its own). Its tasks share the thread: what one of them does says nothing
    of another.
    """

    @property
    def depth(self) -> int:
        """Never inside."""
        return 0

    @depth.setter
    def depth(self, value: int) -> None:
        """Nothing to keep."""


sync_inside: Final = ThreadInside()
"""Marks the threads inside a sync provider's sending (see :class:`ThreadInside`)."""

async_inside: Final = NeverInside()
"""The async twin of :data:`sync_inside`: never inside (see :class:`NeverInside`)."""


def sync_opening_lock() -> threading.Lock:
    """What callers wait on while one of them opens a sync connection."""
    return threading.Lock()


def async_opening_lock() -> asyncio.Lock:
    """What callers of one event loop wait on while one of them opens its connection."""
    import asyncio

    return asyncio.Lock()
