"""Accept loops that outlive a shortage of file descriptors, with a cap on connections.

anyio's ``Listener.serve`` ends on the first error of ``accept()``, and the service with
it: the process out of file descriptors (``EMFILE``, ``ENFILE``), the kernel out of buffers
(``ENOBUFS``, ``ENOMEM``), a client gone before it was accepted (``ECONNABORTED``). Every
server socket of the service is served by :func:`serve_connections` instead:

- an error of ``accept()`` is logged as a warning (the first, then at most one every
  :data:`WARNING_INTERVAL` seconds, saying how many came meanwhile), and accepting pauses
  :data:`ACCEPT_PAUSE` seconds before it goes on: connections already open keep being
  served, and those waiting are accepted once descriptors are free again. A client gone
  before it was accepted costs neither a line nor a pause;
- at most *max_connections* connections are served at once. Past that, either new
  connections wait, unaccepted, in the kernel's queue until one closes (no *refuse*), or
  each is accepted, handed to *refuse* (which may write a word to it) and closed at once.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, cast

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener

from dispatcher.server.log_records import get_logger
from dispatcher.server.ratelimit import InternalErrorLog, RateLimitedLog

ACCEPT_PAUSE: Final = 0.5
"""Seconds without accepting after ``accept()`` failed (file descriptors may free up)."""

WARNING_INTERVAL: Final = 10.0
"""Seconds between two warnings about failing ``accept()`` calls on one server."""

REFUSAL_TIMEOUT: Final = 1.0
"""Seconds *refuse* may take to write to a connection refused for want of a place."""

GONE_BEFORE_ACCEPTED: Final = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO})
"""Errors of ``accept()`` that concern one client only, gone before it was accepted."""

Handler = Callable[[SocketStream], Awaitable[None]]
"""Serves one connection (and closes it)."""

Refuser = Callable[[SocketStream, int], Awaitable[None]]
"""Writes a word to a connection refused while the given number of connections are open."""

_logger = get_logger("dispatcher.service")


async def serve_connections(
    listener: SocketListener | MultiListener[SocketStream],
    handle: Handler,
    *,
    name: str,
    max_connections: int,
    refuse: Refuser | None = None,
    logger: logging.Logger = _logger,
) -> None:
    """Accept connections on *listener* and serve each with *handle*, until cancelled.

    *name* says which server it is in log lines (``the metrics server``). See the module
    docstring for errors of ``accept()`` and for *max_connections* and *refuse*. A bug that
    escapes *handle* is logged and costs its connection only.
    """
    server = _CappedServer(handle, name, max_connections, refuse, logger)
    listeners = listener.listeners if isinstance(listener, MultiListener) else [listener]
    async with anyio.create_task_group() as group:
        for one in listeners:
            group.start_soon(server.accept_loop, cast(SocketListener, one), group)


class _CappedServer:
    """The state the accept loops of one server share: its free places, its warnings."""

    def __init__(
        self,
        handle: Handler,
        name: str,
        max_connections: int,
        refuse: Refuser | None,
        logger: logging.Logger,
    ) -> None:
        self._handle = handle
        self._name = name
        self._max = max_connections
        self._places = anyio.Semaphore(max_connections)
        self._refuse = refuse
        self._logger = logger
        self._full = RateLimitedLog(logger, logging.WARNING, per_second=1)
        self._internal_errors = InternalErrorLog(logger)
        self._last_warning = -WARNING_INTERVAL
        self._unreported = 0

    @property
    def open(self) -> int:
        """Connections being served."""
        return self._max - self._places.value

    async def accept_loop(self, listener: SocketListener, group: TaskGroup) -> None:
        """Accept on *listener*, serving each connection in *group*, until cancelled."""
        while True:
            if self._refuse is None and self._places.value == 0:
                self._full.log(
                    "%s serves %d connections, the most it serves at once: new ones wait",
                    self._name,
                    self._max,
                )
                await self._places.acquire()
                self._places.release()
            try:
                client = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                await self._accept_failed(exc)
                continue
            if self._places.value == 0 and self._refuse is not None:
                await self._turn_away(client, self._refuse)
                continue
            # Free, but for a race between the loops of a server with two listeners.
            await self._places.acquire()
            group.start_soon(self._serve, client)

    async def _serve(self, client: SocketStream) -> None:
        try:
            await self._handle(client)
        except Exception as exc:
            self._internal_errors.report(self._name, exc, "a connection")
            await client.aclose()
        finally:
            self._places.release()

    async def _turn_away(self, client: SocketStream, refuse: Refuser) -> None:
        """Close *client*, accepted while every place is taken, after *refuse* wrote to it."""
        try:
            with anyio.move_on_after(REFUSAL_TIMEOUT):
                await refuse(client, self.open)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # it is being closed anyway
        finally:
            await client.aclose()

    async def _accept_failed(self, exc: OSError | anyio.BrokenResourceError) -> None:
        """Warn (at most every :data:`WARNING_INTERVAL` s) and pause, unless one client left."""
        error = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(error, OSError) and error.errno in GONE_BEFORE_ACCEPTED:
            return
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL:
            self._unreported += 1
        else:
            since = f" ({self._unreported} more since the last warning)" if self._unreported else ""
            self._last_warning, self._unreported = now, 0
            self._logger.warning(
                "%s cannot accept a connection: %s%s; pausing %.1f s (%d connections open)",
                self._name,
                _describe(error),
                since,
                ACCEPT_PAUSE,
                self.open,
            )
        await anyio.sleep(ACCEPT_PAUSE)


def _describe(error: BaseException | None) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        code = errno.errorcode.get(error.errno, str(error.errno))
        return f"{error.strerror or error} ({code})"
    return str(error) or type(error).__name__
