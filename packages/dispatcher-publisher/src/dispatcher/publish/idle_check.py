"""Detecting a connection the server ended while it was idle, before a statement is sent on it."""

from __future__ import annotations

import select
import sys
from typing import Any

import psycopg
from psycopg import BaseConnection


def closed_while_idle(connection: BaseConnection[Any]) -> bool:
    """Whether the server has ended *connection*, idle (no statement running on it), meanwhile.

    An idle connection's socket has nothing to read, unless the server wrote to it: the
    error of a ``pg_terminate_backend()``, a shutdown or an idle timeout (the server's, a
    pooler's), then the end of the stream; rarely, a notice or a changed parameter (then
    the connection is replaced for nothing). Checked before each NOTIFY, which is never
    sent twice (see :class:`~dispatcher.publish.provider_async.AsyncConnectionProvider`),
    through an :class:`IdleWatch` kept with the connection.
    """
    return IdleWatch(connection).closed()


class IdleWatch:
    """:func:`closed_while_idle` for one connection, prepared once.

    A check then costs one non-blocking ``poll()``, under a microsecond (``poll()`` takes
    any descriptor number, unlike ``select()``, which serves where there is no ``poll()``:
    Windows).
    """

    __slots__ = ("_poll", "connection")

    def __init__(self, connection: BaseConnection[Any]) -> None:
        self.connection = connection
        self._poll: Any = None
        if sys.platform != "win32" and hasattr(select, "poll"):
            try:
                self._poll = select.poll()
                self._poll.register(connection.pgconn.socket, select.POLLIN)
            except (psycopg.Error, OSError, ValueError):  # no socket any more
                self._poll = None

    def closed(self) -> bool:
        """Whether the server has ended the connection while it was idle."""
        connection = self.connection
        if connection.closed:
            return True
        try:
            if self._poll is not None:
                return bool(self._poll.poll(0))
            return bool(select.select([connection.pgconn.socket], [], [], 0)[0])
        except (psycopg.Error, OSError, ValueError):  # no socket any more
            return True
