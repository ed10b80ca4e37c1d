"""The running asyncio event loop that the async API needs (and the sync twins' counterparts)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

from dispatcher.publish.errors import AsyncioRequired

if TYPE_CHECKING:
    import asyncio


def async_require_loop(*, connects: bool = True) -> None:
    """Check that an asyncio event loop runs, before code that would fail obscurely without.

    *connects*: the code goes on to use psycopg's async connections, which Windows'
    ProactorEventLoop cannot run; ``False`` where nothing connects (an interceptor of
    :mod:`dispatcher.testing` takes the messages): any asyncio loop serves then.

    :raises AsyncioRequired: when none runs (trio's, say), or, if it *connects*, when it is
        Windows' ProactorEventLoop.
    """
    running_loop(connects=connects)


def sync_require_loop(*, connects: bool = True) -> None:
    """The sync twin of :func:`async_require_loop`: nothing to check."""


def async_in_loop() -> bool:
    """Whether an asyncio event loop runs here (async connections may be used)."""
    import asyncio  # only async callers pay for it

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def sync_in_loop() -> bool:
    """The sync twin of :func:`async_in_loop`: sync connections may always be used."""
    return True


def running_loop(*, connects: bool = True) -> asyncio.AbstractEventLoop:
    """The running asyncio event loop (one that async connections can use, if it *connects*).

    :raises AsyncioRequired: when there is none: the caller runs under another event loop
        (trio, curio) or none at all; or, if it *connects*, when it is Windows'
        ProactorEventLoop, on which psycopg's async connections cannot run (a retry would
        not help: it is no :class:`BrokerUnavailable`).
    """
    import asyncio  # only async callers pay for it

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise AsyncioRequired(
            "the async API (asubmit_task, adelay, abatch...) needs a running asyncio event"
            " loop, and none runs here: it supports asyncio only (psycopg's async"
            " connections do). Under trio, call the sync API in a worker thread, e.g."
            " `await trio.to_thread.run_sync(my_task.delay, ...)`"
        ) from None
    if connects and sys.platform == "win32" and isinstance(loop, asyncio.ProactorEventLoop):
        raise AsyncioRequired(PROACTOR_LOOP)
    return loop


PROACTOR_LOOP: Final = (
    "the async API (asubmit_task, adelay, abatch...) cannot run on Windows' default event"
    " loop, the ProactorEventLoop: psycopg's async connections need a selector loop. Run"
    " your code on one: asyncio.run(main(), loop_factory=asyncio.SelectorEventLoop) on"
    " Python 3.12 and later; on 3.11,"
    " asyncio.Runner(loop_factory=asyncio.SelectorEventLoop).run(main())"
)
"""What the async API says, raising :class:`AsyncioRequired`, on a ProactorEventLoop."""
