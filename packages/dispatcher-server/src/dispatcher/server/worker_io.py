"""Reading a worker's events from its socket, and noticing the end of its process.

Reader callbacks on the event loop rather than tasks awaiting readability: one event per
wake-up, with no epoll registration per read and no task switch (this is the hot path).
The pidfd tells at once when the process ends, even if a child it started still holds its
socket open (so that no end-of-file comes); what the process wrote last is read first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Final

from dispatcher.server.launched_process import WorkerProcess
from dispatcher.server.protocol import MAX_EVENT_BYTES, LineReader, LineTooLong, read_line

_READ_SIZE: Final = 1 << 16

_SHOWN_BYTES: Final = 200
"""Bytes of an overlong line passed on to be shown (the log line escapes and cuts them)."""

EventHandler = Callable[[dict[str, Any]], None]


class WorkerEvents:
    """Delivers each event of *process* to *on_event*, then calls *on_end* once.

    An event that cannot be handled costs that event only: the exception goes to *on_error*
    and reading goes on. A line that is not an event at all (the worker's task wrote on the
    event pipe) goes to *on_garbled*, once: nothing more the worker sends can be trusted to
    be its events, so the rest is ignored.
    """

    def __init__(
        self,
        process: WorkerProcess,
        on_event: EventHandler,
        on_end: Callable[[], None],
        on_error: Callable[[Exception], None],
        on_garbled: Callable[[bytes, Exception], None],
    ) -> None:
        self._process = process
        self._on_event = on_event
        self._on_end = on_end
        self._on_error = on_error
        self._on_garbled = on_garbled
        self._reader = LineReader(MAX_EVENT_BYTES)
        self._ended = False
        self._garbled = False

    def start(self) -> None:
        """Begin watching the socket and the process."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._process.fd, self._on_readable)
        loop.add_reader(self._process.pidfd, self._on_process_end)

    def stop(self) -> None:
        """Stop watching."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._process.fd)
        loop.remove_reader(self._process.pidfd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._process.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._deliver(data)
        else:
            self._end()

    def _on_process_end(self) -> None:
        while not self._ended:
            try:
                data = os.read(self._process.fd, _READ_SIZE)
            except OSError:
                break
            if not data:
                break
            self._deliver(data)
        self._end()

    def _deliver(self, data: bytes) -> None:
        if self._garbled:
            return
        try:
            lines = self._reader.feed(data)
        except LineTooLong as exc:
            self._garbled = True
            self._on_garbled(data[:_SHOWN_BYTES], exc)
            return
        for line in lines:
            try:
                event = read_line(line)
                if not isinstance(event, dict) or "event" not in event:
                    raise ValueError("not a worker event")
            except ValueError as exc:
                self._garbled = True
                self._on_garbled(line, exc)
                return
            try:
                self._on_event(event)
            except Exception as exc:  # costs this event, never the worker or the service
                self._on_error(exc)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.stop()
            self._on_end()
