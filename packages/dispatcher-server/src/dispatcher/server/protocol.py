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

from dispatcher.schema import MAX_MESSAGE_BYTES

MAX_EVENT_BYTES: Final = 6 * MAX_MESSAGE_BYTES + (1 << 20)
"""Longest event line taken from a worker: a bound task's ``control("run", ...)`` carries a
message of up to :data:`~dispatcher.schema.MAX_MESSAGE_BYTES`, which the event's JSON may
write six times longer (non-ASCII characters escaped); its other events are far shorter (a
task's end: a result of at most 64 KiB of JSON, an error and traceback cut by the worker).
A longer line is the task writing on the event pipe, and ends the worker: a bound task's
control command that would make one is not sent (its reply says why)."""

STOP_LINE: Final = b'{"op":"stop"}\n'
"""Asks a worker to exit after its current task."""

PIPELINE_DEPTH: Final = 4
"""Run requests a worker may hold beyond the one it runs (sent while a backlog exists)."""

REFILL_BELOW: Final = 2
"""A busy worker is sent more jobs ahead only once it holds fewer than this many: then as
many as make :data:`PIPELINE_DEPTH`, in one write (one system call for several jobs, on
both sides, rather than one per job)."""

CANCEL_SIGNALS: Final = tuple(signal.SIGRTMIN + n for n in range(2 * PIPELINE_DEPTH + 2))
"""The signals that cancel a task: the one of run request number *n* (counted from 1 on each
worker) is ``CANCEL_SIGNALS[n % len(CANCEL_SIGNALS)]``.

With at most *D* (:data:`PIPELINE_DEPTH`) requests held ahead, a cancel aimed at request *t*
reaches a worker whose last started request *s* is between ``t - D - 1`` (the service saw
``t - D - 1`` end, so it counts ``t - D`` as running, but the worker has not started it
yet) and ``t + D`` (the service has not yet seen *t* end, so it sent nothing past
``t + D``, but the worker may have run all of them). Those ``2D + 2`` cases each get a
signal of their own: the worker cancels *t* if it runs it, remembers it if it has not
started it, and ignores a cancel that arrives after *t* ended. A plain SIGUSR1 cancels
whatever task runs."""


RECALL_SIGNAL: Final = signal.SIGRTMIN + len(CANCEL_SIGNALS)
"""The signal that recalls a worker's jobs (a reload): every run request it has not started
when the signal comes, and every one it reads after, it ends unstarted, reporting
``recalled``. One it has started runs to its end. So the service sends such a worker no
more requests: it retires it."""


def cancel_target(signum: int, last_started: int) -> int | None:
    """The request a cancel signal aims at, seen by a worker that last started *last_started*.

    ``None`` when the cancel is for a request that has already ended.
    """
    offset = (signum - CANCEL_SIGNALS[0] - last_started) % len(CANCEL_SIGNALS)
    return None if offset > PIPELINE_DEPTH + 1 else last_started + offset


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


_RUN_HEAD: Final = b'{"op":"run",'
_START_BY_HEAD: Final = b'{"op":"run","start_by":'


def has_start_by(line: bytes) -> bool:
    """Whether run request *line* carries a ``start_by`` (see :func:`with_start_by`)."""
    return line.startswith(_START_BY_HEAD)


def start_by_of(line: bytes) -> float | None:
    """The ``start_by`` of run request *line* (see :func:`with_start_by`), if it has one."""
    if not line.startswith(_START_BY_HEAD):
        return None
    return float(line[len(_START_BY_HEAD) : line.index(b",", len(_START_BY_HEAD))])


def with_start_by(line: bytes, deadline: float) -> bytes:
    """*line* (a run request) with ``start_by``: not to be started after *deadline*.

    *deadline* is on ``time.monotonic()``, which every process of the machine shares; a
    worker that reads the request later reports it ``expired`` instead of running it. A
    ``start_by`` the line had is replaced.
    """
    if line.startswith(_START_BY_HEAD):
        line = _RUN_HEAD + line[line.index(b",", len(_START_BY_HEAD)) + 1 :]
    return b"%s%r,%s" % (_START_BY_HEAD, deadline, line[len(_RUN_HEAD) :])


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


class LineTooLong(ValueError):
    """A line grew past the reader's limit before its newline came."""


class LineReader:
    """Splits the bytes read from a socket into lines (messages).

    With *max_line*, a line longer than that many bytes raises :class:`LineTooLong` as soon
    as it is known to be too long, without its end being awaited or its bytes kept.
    """

    def __init__(self, max_line: int | None = None) -> None:
        self._max_line = max_line
        self._pending: list[bytes] = []
        self._pending_size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add *data*; return the complete lines it finished, without their newlines.

        :raises LineTooLong: when a line passes the limit (the reader is then of no more use).
        """
        if b"\n" not in data:
            self._pending.append(data)  # joined once, when the line ends: never quadratic
            self._pending_size += len(data)
            self._check(self._pending_size)
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest:
            self._pending.append(rest)
        self._pending_size = len(rest)
        if self._max_line is not None and len(data) > self._max_line:
            self._check(max(self._pending_size, *map(len, lines)))
        return lines

    def _check(self, size: int) -> None:
        if self._max_line is not None and size > self._max_line:
            raise LineTooLong(f"a line of more than {self._max_line} bytes")


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
