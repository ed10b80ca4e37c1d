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

from dispatcher.server.launcher import WorkerProcess
from dispatcher.server.protocol import LineReader, read_line

_READ_SIZE: Final = 1 << 16

EventHandler = Callable[[dict[str, Any]], None]


class WorkerEvents:
    """Delivers each event of *process* to *on_event*, then calls *on_end* once.

    An event that cannot be decoded or handled costs that event only: the exception goes
    to *on_error* and reading goes on.
    """

    def __init__(
        self,
        process: WorkerProcess,
        on_event: EventHandler,
        on_end: Callable[[], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._process = process
        self._on_event = on_event
        self._on_end = on_end
        self._on_error = on_error
        self._reader = LineReader()
        self._ended = False

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
        for line in self._reader.feed(data):
            try:
                self._on_event(read_line(line))
            except Exception as exc:  # costs this event, never the worker or the service
                self._on_error(exc)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.stop()
            self._on_end()
