"""The line protocol between the service and its workers, over a socket pair.

Each message is one line of compact JSON. The service sends ``{"op": "run", ...}``,
``{"op": "stop"}`` and ``{"op": "reply", ...}``; a worker sends events: ``ready``, ``done``,
``control`` (a bound task's request, answered by a reply) and ``fatal``.
A task message is passed through as the JSON text it arrived in, so the service does not
encode it again.
"""

from __future__ import annotations

import json
import signal
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final

STOP_LINE: Final = b'{"op":"stop"}\n'
"""Asks a worker to exit after its current task."""

PIPELINE_DEPTH: Final = 1
"""Run requests a worker may hold beyond the one it runs (sent while a backlog exists)."""

CANCEL_SIGNALS: Final = tuple(signal.SIGRTMIN + n for n in range(4))
"""The signals that cancel a task: the one of run request number *n* (counted from 1 on each
worker) is ``CANCEL_SIGNALS[n % 4]``.

With at most one request held ahead, a cancel aimed at request *t* reaches a worker whose
last started request *s* is between ``t - 2`` and ``t + 1`` (the service sends request
``t + 2`` only after it has seen ``t`` end), so ``t`` modulo 4 names it exactly: the
worker cancels *t* if it runs it, remembers it if it has not started it, and ignores a
cancel that arrives after *t* ended. A plain SIGUSR1 cancels whatever task runs."""


def cancel_target(signum: int, last_started: int) -> int | None:
    """The request a cancel signal aims at, seen by a worker that last started *last_started*.

    ``None`` when the cancel is for a request that has already ended.
    """
    offset = (signum - CANCEL_SIGNALS[0] - last_started) % len(CANCEL_SIGNALS)
    return None if offset == len(CANCEL_SIGNALS) - 1 else last_started + offset


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


_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def read_line(line: bytes) -> Any:
    """Decode one line of the protocol (without its newline).

    The JSON scanner is called directly, which skips what ``json.loads`` does around it
    (guessing the encoding, matching whitespace at both ends): about two microseconds less
    per line. A line it does not take whole goes through ``json.loads``, which says why.

    :raises ValueError: when the line is not JSON.
    """
    text = line.decode()
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


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
