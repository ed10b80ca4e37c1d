"""The application's logging handlers in a worker: they write to the log, not to the capture.

A worker captures what its tasks write to standard output and error, and logs it once the
task has ended, as its output (see :mod:`dispatcher.server.capture`). A logging handler of
the application's that writes there (Django's ``console`` handler, a ``StreamHandler`` that
a ``dictConfig`` made when a task module was imported) would have its records held until
then, re-labelled, cut in pieces. Here each such handler (a :class:`logging.StreamHandler`
whose stream writes to file descriptor 1 or 2) gets, in place of its stream, the standard
output or error that the worker had before the capture, through an :class:`EscapingStream`:
its records are written at once, as the application formats them, at their level.

Handlers made later (a module imported lazily, a ``dictConfig`` in a task) are found when
``logging._handlerList``, where :mod:`logging` keeps every handler it made, has a new last
entry: one look at a list's last item, at each task's start, and each time the capture reads
output (so a handler made during a task has its first line captured, not the following ones).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Final, TextIO

from dispatcher.server.log_handler import is_service_handler
from dispatcher.server.log_text import INDENT, escape

_HANDLERS: Final[list[object]] = getattr(logging, "_handlerList", [])
"""Weak references to every handler made, the newest last (appended by ``Handler()``)."""

_STD_FDS: Final = (1, 2)

_MISSING: Final = object()


class EscapingStream:
    r"""A text stream for a logging handler, writing to *stream* what cannot forge a line.

    Each write is one record (a :class:`logging.StreamHandler` writes a record and its line
    break at once): its first line is escaped as a logged value is (a line break, a control
    character becomes ``\n``, ``\x1b``...), each following one (a traceback) is escaped too
    and starts with :data:`~dispatcher.server.log_text.INDENT` (as the service's own blocks
    do), so that nothing a record holds can begin a line of the log. A record of printable
    text on one line, the common case, is written as it is.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        """Where the records go."""

    def write(self, text: str) -> int:
        """Write the record *text*, escaped; return its length."""
        if text.endswith("\n") and text[:-1].isprintable():
            self.stream.write(text)
        else:
            self.stream.write(_escaped(text))
        return len(text)

    def flush(self) -> None:
        """Flush *stream*."""
        self.stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)  # fileno(), isatty(), encoding...


def _escaped(text: str) -> str:
    """*text* with every line escaped, those after the first indented."""
    parts = text.split("\n")
    last = len(parts) - 1
    shown = []
    for number, part in enumerate(parts):
        if number == last and not part:
            break  # (after the final line break)
        line = part if part.isprintable() else escape(part, None)
        shown.append(line if number == 0 or line.startswith(INDENT) else INDENT + line)
    return "\n".join(shown) + ("\n" if text.endswith("\n") else "")


class HandlerStreams:
    """Points the application's handlers that write to fds 1 and 2 at *stdout* and *stderr*.

    *stdout* and *stderr* are the worker's standard output and error as they were before the
    capture (copies of the file descriptors).
    """

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self._targets = {1: EscapingStream(stdout), 2: EscapingStream(stderr)}
        self._seen: object = None
        """The newest handler's entry in ``logging._handlerList`` when all were pointed."""
        self._lock = threading.Lock()

    def adopt(self, waiting: bool = True) -> bool:
        """Point the handlers made since the last call (all, the first time); ``True`` if done.

        *waiting*: ``False`` from another thread than the one running the tasks, which may
        hold a handler's lock, or be making one: a handler busy now (or not made whole yet)
        is left for the next call, which then looks at every handler again.
        """
        newest = _HANDLERS[-1] if _HANDLERS else None
        if newest is self._seen:
            return True
        if not self._lock.acquire(blocking=waiting):
            return False
        try:
            done = all([self._point(ref, waiting) for ref in list(_HANDLERS)])
            if done:
                self._seen = newest
            return done
        finally:
            self._lock.release()

    def _point(self, ref: object, waiting: bool) -> bool:
        """Point the handler of *ref* at our stream if it writes to fd 1 or 2; ``False``: later."""
        handler = ref() if callable(ref) else None
        if not isinstance(handler, logging.StreamHandler) or is_service_handler(handler):
            return True
        if isinstance(getattr(type(handler), "stream", None), property):
            return True  # its stream is looked up at each record (logging.lastResort)
        stream = vars(handler).get("stream", _MISSING)
        if stream is _MISSING:  # being made, by another thread: its stream is not set yet
            return waiting  # (between tasks, none is: a handler of an odd kind, left alone)
        fd = None if type(stream) is EscapingStream else _fd(stream)
        if fd is None:
            return True
        target = self._targets[fd]
        lock = handler.lock
        if lock is not None and not lock.acquire(blocking=waiting):
            return False
        try:
            if waiting:  # (not from the thread that reads the capture: it would wait for itself)
                with contextlib.suppress(Exception):
                    stream.flush()
            handler.stream = target
        finally:
            if lock is not None:
                lock.release()
        return True


def _fd(stream: object) -> int | None:
    """The file descriptor *stream* writes to, if it is 1 or 2."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except Exception:
        return None
    return fd if type(fd) is int and fd in _STD_FDS else None
