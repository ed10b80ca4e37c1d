"""Reading the listening connection's notifications straight from libpq, and delivering them.

Notifications are read straight from the connection: at each wake-up, as many as the
socket holds (each payload decoded once), rather than a few per wake-up. The self-check's
notification is kept apart (:attr:`Drain.check_token`), never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

import anyio
import anyio.lowlevel
import psycopg

from dispatcher.server.brokers.base import Deliver
from dispatcher.server.origin import Origin

MAX_PER_TURN: Final = 256
"""Notifications delivered in one go, before the other tasks of the service get a turn."""


class Drain:
    """Reads the notifications of one connection straight from libpq, many per wake-up.

    psycopg's ``notifies()`` waits for the socket once for every read, and a read brings
    16 kB at most: a few large notifications. Here a reader callback on the event loop (no
    task switch, no epoll registration per wake-up: this is the hot path) reads on while
    reads bring notifications, up to :data:`MAX_PER_TURN` of them before other callbacks
    get a turn, and each payload is decoded once.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        check_channel: str,
        origins: Mapping[str, Origin],
        deliver: Deliver,
    ) -> None:
        self.fileno = conn.fileno()
        self._pgconn = conn.pgconn
        self._encoding = encoding = conn.info.encoding
        self._check_channel = check_channel
        self._check = check_channel.encode(encoding)
        self._origins = origins
        self._by_name = {name.encode(encoding): origin for name, origin in origins.items()}
        self._deliver = deliver
        self.check_token: str | None = None
        """The payload of the last self-check notification received."""
        self.more = False
        """The last :meth:`run` stopped at :data:`MAX_PER_TURN`: more may be waiting."""
        self.last_heard = time.monotonic()
        """When a notification last came (monotonic clock)."""
        self.failed = anyio.Event()
        """Set when reading failed: :meth:`raise_failure` raises why."""
        self._failure: Exception | None = None
        self._watching = False

    def run(self) -> int:
        """Read what the socket holds and deliver the notifications; return how many.

        :raises psycopg.OperationalError: when the connection is broken.
        """
        pgconn, handle = self._pgconn, self._handle
        delivered = 0
        while delivered < MAX_PER_TURN:
            pgconn.consume_input()  # one non-blocking read
            notify = pgconn.notifies()  # parses what has been read
            if notify is None:
                break
            while notify is not None:
                handle(notify.relname, notify.extra)
                delivered += 1
                notify = pgconn.notifies()
        self.more = delivered >= MAX_PER_TURN
        return delivered

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Deliver from a reader callback while in this block (the socket is ours then).

        :raises Exception: at once, what made reading fail before (see :meth:`raise_failure`).
        """
        self.raise_failure()  # never watch a socket number libpq has given up
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fileno, self._on_readable)
        self._watching = True
        try:
            self._on_readable()  # what came while nobody watched
            yield
        finally:
            self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            asyncio.get_running_loop().remove_reader(self.fileno)

    def raise_failure(self) -> None:
        """Raise what made reading fail, if it did."""
        if self._failure is not None:
            raise self._failure

    def _on_readable(self) -> None:
        if not self._watching or self._failure is not None:
            return
        try:
            if self.run():
                self.last_heard = time.monotonic()
        except Exception as exc:  # the connection broke: the serving task replaces it
            # At once: libpq has closed a broken connection's socket, and a socket opened
            # before the serving task resumes may get its number (and needs the loop's
            # reader slot for it).
            self._stop_watching()
            self._failure = exc
            self.failed.set()
            return
        if self.more:  # what libpq has already read would not wake the socket again
            asyncio.get_running_loop().call_soon(self._on_readable)

    async def wait(self) -> None:
        """Wait until the socket has more to read; only give others a turn if it has.

        (For the self-check, which reads between statements of its own.)
        """
        if self.more:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.wait_readable(self.fileno)

    def take(self, notify: psycopg.Notify) -> None:
        """Handle a notification psycopg read (and decoded) while a statement ran."""
        if notify.channel == self._check_channel:
            self.check_token = notify.payload
        else:
            self._deliver(notify.payload, self._origin(notify.channel))

    def _handle(self, channel: bytes, payload: bytes) -> None:
        text = payload.decode(self._encoding, "replace")
        origin = self._by_name.get(channel)
        if origin is not None:
            self._deliver(text, origin)
        elif channel == self._check:
            self.check_token = text
        else:
            self._deliver(text, self._origin(channel.decode(self._encoding, "replace")))

    def _origin(self, channel: str) -> Origin:
        origin = self._origins.get(channel)
        return Origin("pg_notify", channel=channel) if origin is None else origin
