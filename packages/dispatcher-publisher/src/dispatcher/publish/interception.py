"""The one place where task messages leave the process, and a hook to take them there instead.

Every way of submitting a task (``submit_task()``, ``.delay()``, ``.apply_async()``,
``batch()``, their asyncio twins, with or without ``connection=``, to NOTIFY channels and
durable queues alike) ends in the ``send()`` of ``submit_sync`` or ``asend()`` of
``submit_async``, once the message is built and checked. While an :class:`Interceptor` is
installed, those hand it the submissions and send nothing. :mod:`dispatcher.testing`
installs one to run tasks in-process, or to record them, without a database.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from dispatcher.publish.submission import Submission


class Interceptor(Protocol):
    """Takes the submissions that would be sent, in their place."""

    @property
    def default_queue(self) -> str | None:
        """The queue of a task that names none when no config is set up (``None``: an error)."""
        ...

    def refusal(self, task: str) -> str | None:
        """Why it will not take submissions of *task*, a name not registered here, if it won't.

        Asked as soon as the message of such a task is checked, before its queue is looked
        for: a misspelt name is then reported as such, rather than as what follows from it.
        """
        ...

    def send(self, submissions: Sequence[Submission], connection: object | None) -> None:
        """Take *submissions*, checked and ready to send, in order.

        *connection* is the caller's, when it passed one (nothing should be done with it).
        """
        ...

    async def asend(self, submissions: Sequence[Submission], connection: object | None) -> None:
        """:meth:`send`, called from asyncio code."""
        ...


current: Interceptor | None = None
"""The interceptor in force, if any: read by the sending functions at each send."""

_lock = threading.Lock()


def install(interceptor: Interceptor | None) -> Interceptor | None:
    """Put *interceptor* in force for the whole process (``None``: send for real).

    Returns the interceptor it replaces, to put back when done.
    """
    global current
    with _lock:
        previous, current = current, interceptor
    return previous
