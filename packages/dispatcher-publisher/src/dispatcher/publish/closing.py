"""Closing the SDK's shared connections without waiting for ever on a lock the caller may hold."""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final

import psycopg

from dispatcher.publish.event_loops import running_loop

CLOSE_WAIT: Final = 5.0
"""Seconds closing an async shared connection waits for the statement running on it to end.

Past that (a long statement), another task of its event loop closes it once it ends.
"""

LOCK_WAIT: Final = 0.05
"""Seconds closing from sync code waits for a lock that the current thread may hold itself.

A signal handler that closes the connections runs in a thread it interrupted, which may be
sending on one (holding the connection's lock) or taking one (holding a provider's lock):
waiting longer would only delay the handler, and waiting for good would deadlock it. Other
threads hold those locks for a moment, or for the statement they run. Past that wait, a
daemon thread does the rest once the lock is free.
"""


_closing: set[Any] = set()
"""Closers still waiting for the statement running on a connection to end (kept referenced)."""


def sync_later(function: Callable[..., object], *args: object) -> None:
    """Run ``function(*args)`` on a daemon thread: what a close that must not wait leaves."""
    threading.Thread(target=function, args=args, name="dispatcher-close", daemon=True).start()


def async_later(function: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
    """Run ``function(*args)`` as a task of the running event loop (kept referenced)."""
    task = running_loop().create_task(function(*args))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def sync_close_when_free(connection: psycopg.Connection[Any]) -> None:
    """Close a shared connection no caller can get any more, once no statement runs on it.

    Closing frees the connection's memory in libpq: under the connection's lock, which every
    statement holds, so that no other thread is using it then. Waits :data:`LOCK_WAIT`
    seconds at most for that lock (the thread calling may hold it: a signal handler's), then
    leaves the closing to a daemon thread, which closes it once the statement ends.
    """
    lock = connection.lock
    if lock.acquire(timeout=LOCK_WAIT):
        try:
            connection.close()
        finally:
            lock.release()
        return

    def close_later() -> None:
        with lock:
            connection.close()

    sync_later(close_later)


async def async_close_when_free(connection: psycopg.AsyncConnection[Any]) -> None:
    """:func:`sync_close_when_free` for an async connection.

    Other tasks of its event loop may be sending on it: closing it under them would close
    the socket they wait on.
    """
    import asyncio

    lock = connection.lock
    try:
        await asyncio.wait_for(lock.acquire(), CLOSE_WAIT)
    except TimeoutError:

        async def close_later() -> None:
            async with lock:
                await connection.close()

        async_later(close_later)
        return
    try:
        await connection.close()
    finally:
        lock.release()
