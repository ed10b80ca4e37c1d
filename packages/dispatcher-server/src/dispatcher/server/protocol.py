"""The line protocol between the service and its workers, over a socket pair.

Each message is one line of compact JSON. The service sends ``{"op": "run", ...}``,
``{"op": "stop"}`` and ``{"op": "reply", ...}``; a worker sends events: ``ready``, ``done``,
``control`` (a bound task's request, answered by a reply) and ``fatal``.
A task message is passed through as the JSON text it arrived in, so the service does not
encode it again.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from typing import Any, Final

STOP_LINE: Final = b'{"op":"stop"}\n'
"""Asks a worker to exit after its current task."""


def reply_line(reply: dict[str, Any]) -> bytes:
    """The line answering a worker's control request."""
    return (_ENCODER.encode({"op": "reply", "reply": reply}) + "\n").encode()


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def run_line(raw_message: str, channel: str, keep_result: bool = False) -> bytes:
    """The line that asks a worker to run the task message *raw_message* (JSON text).

    With *keep_result*, the worker reports the task's return value (for a durable broker).
    """
    # A newline in valid JSON text can only be whitespace between tokens: inside strings it
    # must be escaped. Replacing it keeps the message on one line without re-encoding it.
    flat = raw_message.replace("\n", " ").replace("\r", " ")
    result = ',"result":true' if keep_result else ""
    head = f'{{"op":"run","channel":{_ENCODER.encode(channel)}{result}'
    return f'{head},"message":{flat}}}\n'.encode()


def event_line(event: dict[str, Any]) -> bytes:
    """Encode a worker event as one line."""
    return (_ENCODER.encode(event) + "\n").encode()


class LineReader:
    """Splits the bytes read from a socket into lines (messages)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add *data*; return the complete lines it finished, without their newlines."""
        if b"\n" not in data:
            self._pending += data
            return []
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return lines


class BlockingLineSocket:
    """A worker's end of the pair: blocking reads and writes of whole lines."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._reader = LineReader()
        self._lines: deque[bytes] = deque()

    def read(self, timeout: float | None = None) -> bytes | None:
        """Return the next line, or ``None`` once the service has gone.

        :raises TimeoutError: when *timeout* seconds pass without a line.
        """
        while not self._lines:
            self._sock.settimeout(timeout)
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise
            except ConnectionError:
                return None
            if not data:
                return None
            self._lines.extend(self._reader.feed(data))
        return self._lines.popleft()

    def read_reply(self) -> bytes:
        """Return the next ``reply`` line, keeping other lines for :meth:`read`.

        :raises ConnectionError: when the service has gone.
        """
        kept: list[bytes] = []
        try:
            while True:
                line = self.read()
                if line is None:
                    raise ConnectionError("the service has gone")
                if line.startswith(b'{"op":"reply"'):
                    return line
                kept.append(line)
        finally:
            self._lines.extendleft(reversed(kept))

    def send(self, line: bytes) -> None:
        """Send one line (as made by :func:`event_line`)."""
        self._sock.sendall(line)
